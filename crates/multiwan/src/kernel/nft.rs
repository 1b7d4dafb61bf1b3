//! nftables. The whole table is loaded from the planner's text with `nft -f -` (one atomic
//! transaction; the only place a process is used, with a deadline). Everything else goes over
//! nfnetlink as structures: the table's digest (its comment, in the table's user data), the
//! installed uplink ids (the `restore` map's elements), each policy's state (its map's
//! elements and numgen modulus), counters, and the health updates themselves — one batch that
//! rewrites the changed policy maps (and numgen rules), atomic and without a process.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use multiwan_core::plan::{PolicyMap, Selector, NFT_TABLE, RESTORE_MAP};
use netlink_packet_core::{DefaultNla, Nla, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP};
use netlink_packet_netfilter::nftables::{
    DataAttribute, Expressions, ListAttribute, Lookup, NfTablesMessage, Register, RuleAttribute,
    RuleMessage, SetElementAttribute, SetElementList, SetElementMessage, TableAttribute,
    TableMessage, Verdict, VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};
use netlink_sys::protocols::NETLINK_NETFILTER;

use super::exec;
use super::nftread::{ElementsMsg, RuleSummary, RulesMsg};
use super::socket::NlSocket;

/// `NFNL_SUBSYS_NFTABLES`: the resource id of a batch's begin and end messages.
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// nftables' user-data tag of a table comment (`NFTNL_UDATA_TABLE_COMMENT`).
const UDATA_TABLE_COMMENT: u8 = 0;
/// Elements per NEWSETELEM message: an element with the longest chain name (`up_` and 15
/// characters) takes 56 bytes, so 1 024 of them stay well inside the list attribute's 16-bit
/// length.
const ELEMENTS_PER_MESSAGE: usize = 1024;
/// numgen expression attributes (`NFTA_NG_*`) and types.
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFTA_NG_OFFSET: u16 = 4;
const NFT_NG_INCREMENTAL: u32 = 0;
const NFT_NG_RANDOM: u32 = 1;
/// counter expression attributes (`NFTA_COUNTER_*`).
const NFTA_COUNTER_PACKETS: u16 = 2;
/// object attributes (`NFTA_OBJ_*`) and the counter object type.
const NFTA_OBJ_TABLE: u16 = 1;
const NFTA_OBJ_NAME: u16 = 2;
const NFTA_OBJ_TYPE: u16 = 3;
const NFTA_OBJ_DATA: u16 = 4;
const NFT_OBJECT_COUNTER: u32 = 1;
/// How long a structural load may take (a 64-uplink, 1000-rule ruleset loads in well under a
/// second on a small router).
const LOAD_DEADLINE: Duration = Duration::from_secs(30);

/// A policy's state as installed: its map's elements and, for numgen policies, the modulus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyState {
    pub modulus: Option<u32>,
    pub elements: Vec<(u32, String)>,
}

impl PolicyState {
    /// Whether the kernel holds exactly this policy.
    pub fn matches(&self, p: &PolicyMap) -> bool {
        let modulus = match p.selector {
            Selector::Numgen { modulus, .. } => Some(modulus),
            Selector::Jhash { .. } => self.modulus,
        };
        self.modulus == modulus && self.elements == p.elements
    }
}

/// An nfnetlink socket for multiwan's table.
pub struct Nft(NlSocket);

fn wrap(m: NfTablesMessage) -> NetfilterMessage {
    NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0), m)
}

fn control(m: ControlMessage) -> NetfilterMessage {
    NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
        m,
    )
}

fn nla_value(n: &DefaultNla) -> Vec<u8> {
    let mut v = vec![0u8; n.value_len()];
    n.emit_value(&mut v);
    v
}

fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// The big-endian u64 of attribute `kind` in a nested attribute list.
fn nested_be64(mut b: &[u8], kind: u16) -> Option<u64> {
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        if ty == kind {
            return be64(b.get(4..len)?);
        }
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
    }
    None
}

/// The comment stored in a table's user data (type-length-value records).
pub fn udata_comment(mut udata: &[u8]) -> Option<String> {
    while udata.len() >= 2 {
        let (ty, len) = (udata[0], usize::from(udata[1]));
        let value = udata.get(2..2 + len)?;
        if ty == UDATA_TABLE_COMMENT {
            let s = value.split(|b| *b == 0).next().unwrap_or(value);
            return String::from_utf8(s.to_vec()).ok();
        }
        udata = &udata[2 + len..];
    }
    None
}

impl Nft {
    pub fn open() -> Result<Self> {
        Ok(Self(NlSocket::open(NETLINK_NETFILTER, false)?))
    }

    fn dump(&mut self, m: NfTablesMessage) -> Result<Vec<NfTablesMessage>> {
        Ok(self
            .0
            .request(wrap(m), NLM_F_DUMP)?
            .into_iter()
            .filter_map(|m| match m.inner {
                netlink_packet_netfilter::NetfilterMessageInner::NfTables(t) => Some(t),
                _ => None,
            })
            .collect())
    }

    /// The table's comment, `Some("")` for a table without one, `None` when it is absent.
    pub fn table_comment(&mut self) -> Result<Option<String>> {
        let req = NfTablesMessage::GetTable(TableMessage {
            attributes: vec![TableAttribute::Name(NFT_TABLE.into())],
        });
        let answers = match self
            .0
            .try_request(wrap(req), 0)
            .context("reading the nftables table")?
        {
            Ok(a) => a,
            Err(r) if r.errno == nix::libc::ENOENT => return Ok(None),
            Err(r) => return Err(r.into_error()).context("reading the nftables table"),
        };
        for a in answers {
            if let netlink_packet_netfilter::NetfilterMessageInner::NfTables(
                NfTablesMessage::NewTable(t),
            ) = a.inner
            {
                let udata = t.attributes.iter().find_map(|x| match x {
                    TableAttribute::UserData(u) => Some(u.as_slice()),
                    _ => None,
                });
                return Ok(Some(udata.and_then(udata_comment).unwrap_or_default()));
            }
        }
        bail!("the kernel answered a table request without the table")
    }

    /// A verdict map's elements: (key, goto target), in key order. An element that is not a
    /// 32-bit key with a `goto` is an error.
    ///
    /// A dump of a large map spans several messages, which the kernel resumes by counting
    /// elements in hash order; right after a batch rewrote the map the kernel may still be
    /// resizing its hash table (a deferred worker), so a resumed dump can repeat some elements
    /// and miss others. A read with a repeated key is therefore taken again (a few times,
    /// 20 ms apart) rather than trusted.
    pub fn map_elements(&mut self, map: &str) -> Result<Vec<(u32, String)>> {
        for _ in 0..10 {
            let out = self.map_elements_once(map)?;
            if out.windows(2).all(|w| w[0].0 != w[1].0) {
                return Ok(out);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        bail!("map {map}: every read repeated some elements (the kernel kept resizing it)")
    }

    fn map_elements_once(&mut self, map: &str) -> Result<Vec<(u32, String)>> {
        let req = NfTablesMessage::GetSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table(NFT_TABLE.into()),
                SetElementList::Set(map.into()),
            ],
        });
        // The answers are read by our own parser (see `nftread`), the request is the crate's.
        let answers: Vec<ElementsMsg> = self
            .0
            .ask(wrap(req), NLM_F_DUMP)
            .with_context(|| format!("reading map {map}"))?;
        let mut out = Vec::new();
        for m in answers {
            let ElementsMsg::Elements(list) = m else {
                continue;
            };
            for e in list {
                out.push(
                    e.ok_or_else(|| anyhow!("map {map}: an element is not a mark with a goto"))?,
                );
            }
        }
        multiwan_core::order::sort(&mut out);
        Ok(out)
    }

    /// The rules of one chain, or of the whole table (`None`), as far as multiwan reads them
    /// (our own parser, see `nftread`).
    fn rules(&mut self, chain: Option<&str>) -> Result<Vec<RuleSummary>> {
        let mut attributes = vec![RuleAttribute::Table(NFT_TABLE.into())];
        attributes.extend(chain.map(|c| RuleAttribute::Chain(c.into())));
        let req = NfTablesMessage::GetRule(RuleMessage { attributes });
        let answers: Vec<RulesMsg> = self
            .0
            .ask(wrap(req), NLM_F_DUMP)
            .with_context(|| format!("reading chain {}", chain.unwrap_or("(every chain)")))?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RulesMsg::Rule(r) => Some(r),
                RulesMsg::Other(_) => None,
            })
            .collect())
    }

    /// The modulus of the numgen expression of each chain that has one: one dump of the whole
    /// table, however many policies there are.
    pub fn numgen_moduli(&mut self) -> Result<BTreeMap<String, u32>> {
        let mut out = BTreeMap::new();
        for r in self.rules(None)? {
            match r.numgen_modulus {
                Some(Some(m)) => {
                    out.entry(r.chain).or_insert(m);
                }
                Some(None) => bail!("chain {}: numgen without a modulus", r.chain),
                None => {}
            }
        }
        Ok(out)
    }

    /// The installed state of one policy, given every chain's numgen modulus
    /// ([`numgen_moduli`](Self::numgen_moduli)).
    pub fn policy(&mut self, p: &PolicyMap, moduli: &BTreeMap<String, u32>) -> Result<PolicyState> {
        Ok(PolicyState {
            modulus: moduli.get(&p.chain).copied(),
            elements: self.map_elements(&p.map)?,
        })
    }

    /// The uplink ids encoded in the `restore` map (`mark → goto restore_NAME`).
    pub fn ids(&mut self, mask: u32) -> Result<BTreeMap<String, u32>> {
        let mut ids = BTreeMap::new();
        for (mark, chain) in self.map_elements(RESTORE_MAP)? {
            let name = chain
                .strip_prefix("restore_")
                .ok_or_else(|| anyhow!("map {RESTORE_MAP}: unexpected target {chain}"))?;
            if name == "main" || name == "none" {
                continue;
            }
            if mark & !mask != 0 || mark & mask == 0 {
                bail!(
                    "map {RESTORE_MAP}: mark {mark:#x} of {name} is outside the mark mask {mask:#x} (was the mask changed while multiwan was installed? run `multiwan down` first)"
                );
            }
            ids.insert(name.to_string(), (mark & mask) >> mask.trailing_zeros());
        }
        Ok(ids)
    }

    /// Rewrites the given policies in one atomic batch: each map's elements are replaced, and
    /// each numgen policy's rule is replaced with its new modulus.
    pub fn update_policies(&mut self, policies: &[&PolicyMap]) -> Result<()> {
        self.0
            .batch(policy_batch(policies))
            .context("updating the balancing policies")
    }

    /// Deletes multiwan's table (and only it).
    pub fn delete_table(&mut self) -> Result<()> {
        let msgs = vec![
            (control(ControlMessage::BatchBegin), 0, false),
            (
                wrap(NfTablesMessage::DeleteTable(TableMessage {
                    attributes: vec![TableAttribute::Name(NFT_TABLE.into())],
                })),
                0,
                true,
            ),
            (control(ControlMessage::BatchEnd), 0, false),
        ];
        self.0.batch(msgs).context("deleting the nftables table")
    }

    /// The packet counts of the table's named counters: name → packets.
    pub fn named_counters(&mut self) -> Result<BTreeMap<String, u64>> {
        let req = NfTablesMessage::GetObject(vec![
            DefaultNla::new(NFTA_OBJ_TABLE, cstr(NFT_TABLE)),
            DefaultNla::new(NFTA_OBJ_TYPE, NFT_OBJECT_COUNTER.to_be_bytes().to_vec()),
        ]);
        let mut out = BTreeMap::new();
        for m in self.dump(req).context("reading counters")? {
            let NfTablesMessage::NewObject(attrs) = m else {
                continue;
            };
            let mut name = None;
            let mut packets = None;
            for a in &attrs {
                let v = nla_value(a);
                match a.kind() & 0x3fff {
                    NFTA_OBJ_NAME => {
                        let s = v.split(|b| *b == 0).next().unwrap_or(&v);
                        name = String::from_utf8(s.to_vec()).ok();
                    }
                    NFTA_OBJ_DATA => packets = nested_be64(&v, NFTA_COUNTER_PACKETS),
                    _ => {}
                }
            }
            if let (Some(n), Some(p)) = (name, packets) {
                out.insert(n, p);
            }
        }
        Ok(out)
    }

    /// Packet counts of the rules of `chain` that end in a `goto`: target chain → packets.
    pub fn goto_counters(&mut self, chain: &str) -> Result<BTreeMap<String, u64>> {
        let mut out = BTreeMap::new();
        for r in self.rules(Some(chain))? {
            if let (Some(p), Some(t)) = (r.counter_packets, r.verdict_chain) {
                out.insert(t, p);
            }
        }
        Ok(out)
    }
}

/// The batch that rewrites `policies` (begin, per policy: flush its map, its elements in
/// messages of at most [`ELEMENTS_PER_MESSAGE`], its numgen rule replaced; end), each
/// message with its flags and whether it is acknowledged.
fn policy_batch(policies: &[&PolicyMap]) -> Vec<(NetfilterMessage, u16, bool)> {
    let mut msgs = vec![(control(ControlMessage::BatchBegin), 0, false)];
    for p in policies {
        let table = SetElementList::Table(NFT_TABLE.into());
        let set = SetElementList::Set(p.map.clone());
        // Without elements, DELSETELEM flushes the map.
        msgs.push((
            wrap(NfTablesMessage::DeleteSetElement(SetElementMessage {
                attributes: vec![table.clone(), set.clone()],
            })),
            0,
            true,
        ));
        // The elements go in messages of at most ELEMENTS_PER_MESSAGE: their list is one
        // attribute, whose length is 16 bits (a rotation of weights 1000:999:997 has
        // 2 996 slots, ~165 KiB).
        for chunk in p.elements.chunks(ELEMENTS_PER_MESSAGE) {
            msgs.push((
                wrap(NfTablesMessage::NewSetElement(SetElementMessage {
                    attributes: vec![
                        table.clone(),
                        set.clone(),
                        SetElementList::Elements(elements(chunk)),
                    ],
                })),
                NLM_F_CREATE,
                true,
            ));
        }
        if let Selector::Numgen { random, modulus } = p.selector {
            let chain = vec![
                RuleAttribute::Table(NFT_TABLE.into()),
                RuleAttribute::Chain(p.chain.clone()),
            ];
            msgs.push((
                wrap(NfTablesMessage::DeleteRule(RuleMessage {
                    attributes: chain.clone(),
                })),
                0,
                true,
            ));
            let mut attributes = chain;
            attributes.push(numgen_rule(&p.map, random, modulus));
            msgs.push((
                wrap(NfTablesMessage::NewRule(RuleMessage { attributes })),
                NLM_F_CREATE | NLM_F_APPEND,
                true,
            ));
        }
    }
    msgs.push((control(ControlMessage::BatchEnd), 0, false));
    msgs
}

fn elements(list: &[(u32, String)]) -> Vec<ListAttribute<SetElementAttribute>> {
    list.iter()
        .map(|(k, chain)| {
            ListAttribute::Element(vec![
                SetElementAttribute::Key(DataAttribute::Value(k.to_ne_bytes().to_vec())),
                SetElementAttribute::Data(DataAttribute::Verdict(vec![
                    VerdictAttribute::Code(Verdict::Goto),
                    VerdictAttribute::Chain(chain.clone()),
                ])),
            ])
        })
        .collect()
}

/// `numgen inc|random mod MODULUS vmap @MAP` as expressions: numgen into register 1, then a
/// lookup of register 1 in the map with the verdict register as destination.
fn numgen_rule(map: &str, random: bool, modulus: u32) -> RuleAttribute {
    let ng = Expressions::Other {
        expression_type: "numgen".into(),
        attributes: vec![
            DefaultNla::new(NFTA_NG_DREG, 1u32.to_be_bytes().to_vec()),
            DefaultNla::new(NFTA_NG_MODULUS, modulus.to_be_bytes().to_vec()),
            DefaultNla::new(
                NFTA_NG_TYPE,
                if random {
                    NFT_NG_RANDOM
                } else {
                    NFT_NG_INCREMENTAL
                }
                .to_be_bytes()
                .to_vec(),
            ),
            DefaultNla::new(NFTA_NG_OFFSET, 0u32.to_be_bytes().to_vec()),
        ],
    };
    let lookup = Expressions::Lookup(vec![
        Lookup::Set(map.into()),
        Lookup::SourceRegister(Register::Reg1),
        Lookup::DestinationRegister(Register::Verdict),
    ]);
    RuleAttribute::Expressions(vec![ListAttribute::from(ng), ListAttribute::from(lookup)])
}

/// Loads a whole ruleset transaction (`check`: only validate it, `nft -c`).
pub fn load(script: &str, check: bool) -> Result<()> {
    let args: &[&str] = if check {
        &["-c", "-f", "-"]
    } else {
        &["-f", "-"]
    };
    let out = exec::run("nft", args, script.as_bytes(), LOAD_DEADLINE)?;
    if !out.status.success() {
        bail!(
            "nft rejected the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A rotation of thousands of slots (weights 1000:999:997) is split into messages whose
    /// element list fits its 16-bit attribute length, and every element arrives.
    #[test]
    fn a_long_rotation_is_split_into_messages_that_fit() {
        use netlink_packet_core::{NetlinkBuffer, NetlinkDeserializable, NetlinkHeader};
        let chains = ["up_abcdefghijklmno", "up_b", "up_c"];
        let p = PolicyMap {
            chain: "policy_default".into(),
            map: "m_policy_default".into(),
            selector: Selector::Numgen {
                random: false,
                modulus: 2996,
            },
            elements: (0..2996u32)
                .map(|k| (k, chains[k as usize % 3].to_string()))
                .collect(),
        };
        let mut got = Vec::new();
        for (m, flags, _) in policy_batch(&[&p]) {
            let bytes = super::super::rtmsg::frame(m, flags);
            assert!(bytes.len() < 1 << 16, "a message of {} bytes", bytes.len());
            let b = NetlinkBuffer::new(&bytes);
            let mut header = NetlinkHeader::default();
            header.message_type = b.message_type();
            if let Ok(ElementsMsg::Elements(list)) = ElementsMsg::deserialize(&header, b.payload())
            {
                got.extend(list.into_iter().map(|e| e.expect("a goto element")));
            }
        }
        assert_eq!(got, p.elements);
    }

    #[test]
    fn table_comment_from_user_data() {
        // As nft 1.0.6 stores `comment "multiwan abc"`.
        let mut u = vec![UDATA_TABLE_COMMENT, 13];
        u.extend_from_slice(b"multiwan abc\0");
        assert_eq!(udata_comment(&u).as_deref(), Some("multiwan abc"));
        let mut other = vec![7u8, 2, 0, 0];
        other.extend_from_slice(&u);
        assert_eq!(udata_comment(&other).as_deref(), Some("multiwan abc"));
        assert_eq!(udata_comment(&[0, 40, 1]), None, "truncated");
    }

    #[test]
    fn policy_state_matches_only_the_same_policy() {
        let p = PolicyMap {
            chain: "policy_default".into(),
            map: "m_policy_default".into(),
            selector: Selector::Numgen {
                random: false,
                modulus: 2,
            },
            elements: vec![(0, "up_a".into()), (1, "up_b".into())],
        };
        let mut s = PolicyState {
            modulus: Some(2),
            elements: p.elements.clone(),
        };
        assert!(s.matches(&p));
        s.modulus = Some(1);
        assert!(!s.matches(&p));
        s.modulus = Some(2);
        s.elements.pop();
        assert!(!s.matches(&p));
    }
}
