//! The answers to nftables dumps that multiwan reads often, read here rather than by
//! netlink-packet-netfilter: its list parser (0.4.0, the newest) builds a `Debug` rendering of
//! the whole remaining list for every element it reads, and its expression parser one of each
//! expression's data, even when nothing fails — quadratic in a map's size. A 256-bucket
//! `src-hash` map cost ~80 ms of CPU per read, and each failover reads every policy map
//! before and after its update (~0.34 s of a failover spent formatting bytes nobody saw);
//! with 1 000 rules the rule dumps took most of a 191 ms update. Only what multiwan uses is
//! read:
//!
//! - a set-element dump ([`ElementsMsg`]): each element's 32-bit key and its `goto CHAIN`
//!   verdict; anything else makes the element `None`, which the caller reports;
//! - a rule dump ([`RulesMsg`]): each rule's chain and what its expressions say that
//!   multiwan reads — a numgen modulus, a counter's packets, an immediate verdict's chain.
//!
//! The requests still go out as the crate's messages.

use netlink_packet_core::{DecodeError, NetlinkDeserializable, NetlinkHeader, NlasIterator};

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM`: the type of every message of the dump.
const NEWSETELEM: u16 = (10 << 8) | 12;
/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWRULE`.
const NEWRULE: u16 = (10 << 8) | 6;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_COUNTER_PACKETS: u16 = 2;
const NFTA_IMMEDIATE_DATA: u16 = 2;
/// The `nfgenmsg` header in front of the attributes (family, version, resource id).
const NFGENMSG_LEN: usize = 4;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
/// `NFT_GOTO` (-4), big-endian on the wire.
const NFT_GOTO: i32 = -4;

/// One message of a set-element dump: the map's elements as `(key, goto chain)`, `None` for
/// one that is not a 32-bit key with a goto (multiwan writes no such element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ElementsMsg {
    Elements(Vec<Option<(u32, String)>>),
    /// A message of another type (the kernel sends none in answer to this dump).
    Other(u16),
}

impl NetlinkDeserializable for ElementsMsg {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        let Some(attrs) = attributes(header, payload, NEWSETELEM)? else {
            return Ok(ElementsMsg::Other(header.message_type));
        };
        let mut out = Vec::new();
        for nla in NlasIterator::new(attrs) {
            let nla = nla?;
            if nla.kind() != NFTA_SET_ELEM_LIST_ELEMENTS {
                continue;
            }
            for elem in NlasIterator::new(nla.value()) {
                let elem = elem?;
                if elem.kind() == NFTA_LIST_ELEM {
                    out.push(element(elem.value())?);
                }
            }
        }
        Ok(ElementsMsg::Elements(out))
    }
}

/// What multiwan reads of one rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleSummary {
    pub chain: String,
    /// The modulus of its first `numgen` expression; `Some(None)`: a numgen without one.
    pub numgen_modulus: Option<Option<u32>>,
    /// The packets of its first `counter` expression.
    pub counter_packets: Option<u64>,
    /// The chain of its first `immediate` verdict that names one (`goto` or `jump`).
    pub verdict_chain: Option<String>,
}

/// One message of a rule dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulesMsg {
    Rule(RuleSummary),
    /// A message of another type (the kernel sends none in answer to this dump).
    Other(u16),
}

impl NetlinkDeserializable for RulesMsg {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        let Some(attrs) = attributes(header, payload, NEWRULE)? else {
            return Ok(RulesMsg::Other(header.message_type));
        };
        let mut r = RuleSummary {
            chain: find(attrs, NFTA_RULE_CHAIN)?
                .map(string)
                .unwrap_or_default(),
            ..RuleSummary::default()
        };
        let Some(list) = find(attrs, NFTA_RULE_EXPRESSIONS)? else {
            return Ok(RulesMsg::Rule(r));
        };
        for elem in NlasIterator::new(list) {
            let elem = elem?;
            if elem.kind() != NFTA_LIST_ELEM {
                continue;
            }
            let e = elem.value();
            let name = find(e, NFTA_EXPR_NAME)?.map(string).unwrap_or_default();
            let data = find(e, NFTA_EXPR_DATA)?.unwrap_or_default();
            match name.as_str() {
                "numgen" if r.numgen_modulus.is_none() => {
                    r.numgen_modulus =
                        Some(four(find(data, NFTA_NG_MODULUS)?).map(u32::from_be_bytes));
                }
                "counter" if r.counter_packets.is_none() => {
                    r.counter_packets = find(data, NFTA_COUNTER_PACKETS)?
                        .and_then(|v| <[u8; 8]>::try_from(v).ok())
                        .map(u64::from_be_bytes);
                }
                "immediate" if r.verdict_chain.is_none() => {
                    let path = [NFTA_IMMEDIATE_DATA, NFTA_DATA_VERDICT, NFTA_VERDICT_CHAIN];
                    r.verdict_chain = nested(data, &path)?.map(string);
                }
                _ => {}
            }
        }
        Ok(RulesMsg::Rule(r))
    }
}

/// The attributes after the `nfgenmsg` header of a message of type `ty`; `None` for a
/// message of another type.
fn attributes<'a>(
    header: &NetlinkHeader,
    payload: &'a [u8],
    ty: u16,
) -> Result<Option<&'a [u8]>, DecodeError> {
    if header.message_type != ty {
        return Ok(None);
    }
    payload
        .get(NFGENMSG_LEN..)
        .map(Some)
        .ok_or_else(|| DecodeError::from("nftables message shorter than nfgenmsg"))
}

/// A NUL-terminated string attribute's text.
fn string(v: &[u8]) -> String {
    let s = v.split(|b| *b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(s).into_owned()
}

/// The value of the attribute of `kind` among `attrs` (the first one), if any.
fn find(attrs: &[u8], kind: u16) -> Result<Option<&[u8]>, DecodeError> {
    for nla in NlasIterator::new(attrs) {
        let nla = nla?;
        if nla.kind() == kind {
            // The buffer runs to the end of `attrs`; the attribute's own length (checked
            // against it by the iterator) ends the value.
            let len = usize::from(nla.length());
            return Ok(nla.into_inner().get(4..len));
        }
    }
    Ok(None)
}

/// The value at the end of `path`: each kind but the last names a nested attribute.
fn nested<'a>(mut attrs: &'a [u8], path: &[u16]) -> Result<Option<&'a [u8]>, DecodeError> {
    for kind in path {
        match find(attrs, *kind)? {
            Some(v) => attrs = v,
            None => return Ok(None),
        }
    }
    Ok(Some(attrs))
}

/// A 4-byte value.
fn four(v: Option<&[u8]>) -> Option<[u8; 4]> {
    v.and_then(|v| <[u8; 4]>::try_from(v).ok())
}

/// One element's key and goto target.
fn element(attrs: &[u8]) -> Result<Option<(u32, String)>, DecodeError> {
    // Marks, numgen and jhash results are host-order 32-bit integers.
    let key = four(nested(attrs, &[NFTA_SET_ELEM_KEY, NFTA_DATA_VALUE])?).map(u32::from_ne_bytes);
    let target = match nested(attrs, &[NFTA_SET_ELEM_DATA, NFTA_DATA_VERDICT])? {
        Some(v) => {
            let code = four(find(v, NFTA_VERDICT_CODE)?).map(i32::from_be_bytes);
            let chain = find(v, NFTA_VERDICT_CHAIN)?.map(string);
            chain.filter(|_| code == Some(NFT_GOTO))
        }
        None => None,
    };
    Ok(key.zip(target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkBuffer;
    use netlink_packet_netfilter::nftables::{
        DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList,
        SetElementMessage, Verdict, VerdictAttribute,
    };
    use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

    /// The bytes of an nftables message as the crate emits it (the kernel's layout).
    fn inet(m: NfTablesMessage) -> Vec<u8> {
        let m = NetfilterMessage::new(NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0), m);
        super::super::rtmsg::frame(m, 0)
    }

    /// One message read back by our parser `T`.
    fn decode<T: NetlinkDeserializable<Error = DecodeError>>(bytes: &[u8]) -> T {
        let b = NetlinkBuffer::new(bytes);
        let mut header = NetlinkHeader::default();
        header.message_type = b.message_type();
        T::deserialize(&header, b.payload()).expect("parses")
    }

    /// A NEWSETELEM message of `elements`.
    fn message(elements: Vec<ListAttribute<SetElementAttribute>>) -> Vec<u8> {
        inet(NfTablesMessage::NewSetElement(SetElementMessage {
            attributes: vec![
                SetElementList::Table("multiwan".into()),
                SetElementList::Set("m_policy_default".into()),
                SetElementList::Elements(elements),
            ],
        }))
    }

    fn parse(bytes: &[u8]) -> ElementsMsg {
        decode(bytes)
    }

    fn goto(key: u32, chain: &str) -> ListAttribute<SetElementAttribute> {
        ListAttribute::Element(vec![
            SetElementAttribute::Key(DataAttribute::Value(key.to_ne_bytes().to_vec())),
            SetElementAttribute::Data(DataAttribute::Verdict(vec![
                VerdictAttribute::Code(Verdict::Goto),
                VerdictAttribute::Chain(chain.into()),
            ])),
        ])
    }

    #[test]
    fn keys_and_goto_targets_of_every_element() {
        let elements = (0..256)
            .map(|k| goto(k, &format!("up_{}", k % 3)))
            .collect();
        let ElementsMsg::Elements(got) = parse(&message(elements)) else {
            panic!("not a set element message");
        };
        assert_eq!(got.len(), 256);
        for (k, e) in got.iter().enumerate() {
            assert_eq!(e, &Some((k as u32, format!("up_{}", k % 3))));
        }
    }

    #[test]
    fn an_element_that_is_not_a_goto_is_none() {
        let jump = ListAttribute::Element(vec![
            SetElementAttribute::Key(DataAttribute::Value(7u32.to_ne_bytes().to_vec())),
            SetElementAttribute::Data(DataAttribute::Verdict(vec![
                VerdictAttribute::Code(Verdict::Jump),
                VerdictAttribute::Chain("up_a".into()),
            ])),
        ]);
        let wide_key =
            ListAttribute::Element(vec![SetElementAttribute::Key(DataAttribute::Value(vec![
                0;
                8
            ]))]);
        let got = parse(&message(vec![goto(1, "up_b"), jump, wide_key]));
        assert_eq!(
            got,
            ElementsMsg::Elements(vec![Some((1, "up_b".into())), None, None])
        );
    }

    /// A NEWRULE message of `exprs` in `chain`.
    fn rule(chain: &str, exprs: Vec<netlink_packet_netfilter::nftables::Expressions>) -> Vec<u8> {
        use netlink_packet_netfilter::nftables::{RuleAttribute, RuleMessage};
        inet(NfTablesMessage::NewRule(RuleMessage {
            attributes: vec![
                RuleAttribute::Table("multiwan".into()),
                RuleAttribute::Chain(chain.into()),
                RuleAttribute::Expressions(exprs.into_iter().map(ListAttribute::from).collect()),
            ],
        }))
    }

    fn parse_rule(bytes: &[u8]) -> RuleSummary {
        match decode(bytes) {
            RulesMsg::Rule(r) => r,
            RulesMsg::Other(t) => panic!("message type {t:#x}"),
        }
    }

    #[test]
    fn a_rule_s_chain_numgen_counter_and_verdict() {
        use netlink_packet_core::DefaultNla;
        use netlink_packet_netfilter::nftables::{Expressions, Immediate, Register};
        let numgen = Expressions::Other {
            expression_type: "numgen".into(),
            attributes: vec![
                DefaultNla::new(1, 1u32.to_be_bytes().to_vec()),
                DefaultNla::new(NFTA_NG_MODULUS, 7u32.to_be_bytes().to_vec()),
            ],
        };
        let counter = Expressions::Other {
            expression_type: "counter".into(),
            attributes: vec![
                DefaultNla::new(1, 9000u64.to_be_bytes().to_vec()),
                DefaultNla::new(NFTA_COUNTER_PACKETS, 42u64.to_be_bytes().to_vec()),
            ],
        };
        let goto = Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Verdict),
            Immediate::Data(DataAttribute::Verdict(vec![
                VerdictAttribute::Code(Verdict::Goto),
                VerdictAttribute::Chain("rule_web".into()),
            ])),
        ]);
        let r = parse_rule(&rule("balance", vec![counter, goto]));
        assert_eq!(
            r,
            RuleSummary {
                chain: "balance".into(),
                numgen_modulus: None,
                counter_packets: Some(42),
                verdict_chain: Some("rule_web".into()),
            }
        );
        let r = parse_rule(&rule("policy_default", vec![numgen]));
        assert_eq!(r.numgen_modulus, Some(Some(7)));
        assert_eq!((r.counter_packets, r.verdict_chain), (None, None));
        // A numgen without its modulus is told apart from no numgen.
        let bare = Expressions::Other {
            expression_type: "numgen".into(),
            attributes: vec![DefaultNla::new(1, 1u32.to_be_bytes().to_vec())],
        };
        assert_eq!(
            parse_rule(&rule("p", vec![bare])).numgen_modulus,
            Some(None)
        );
    }

    #[test]
    fn other_messages_and_truncation() {
        let mut header = NetlinkHeader::default();
        header.message_type = (10 << 8) | 3;
        assert_eq!(
            ElementsMsg::deserialize(&header, &[]).ok(),
            Some(ElementsMsg::Other((10 << 8) | 3))
        );
        header.message_type = NEWSETELEM;
        assert!(ElementsMsg::deserialize(&header, &[2, 0]).is_err());
        // An attribute claiming more bytes than the message has.
        assert!(ElementsMsg::deserialize(&header, &[2, 0, 0, 0, 40, 0, 3, 0]).is_err());
    }
}
