//! The answers to an nftables set-element dump (`NFT_MSG_NEWSETELEM`), read here rather than
//! by netlink-packet-netfilter: its list parser (0.4.0, the newest) builds a `Debug` rendering
//! of the whole remaining list for every element it reads, even when nothing fails, which is
//! quadratic in the map's size. A 256-bucket `src-hash` map cost ~80 ms of CPU per read, and
//! each failover reads every policy map before and after its update (~0.34 s of a failover
//! spent formatting bytes nobody saw). Only what multiwan's maps hold is read: each
//! element's 32-bit key and its `goto CHAIN` verdict; anything else makes the element `None`,
//! which the caller reports. The request still goes out as the crate's message.

use netlink_packet_core::{DecodeError, NetlinkDeserializable, NetlinkHeader, NlasIterator};

/// `NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM`: the type of every message of the dump.
const NEWSETELEM: u16 = (10 << 8) | 12;
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
        if header.message_type != NEWSETELEM {
            return Ok(ElementsMsg::Other(header.message_type));
        }
        let attrs = payload
            .get(NFGENMSG_LEN..)
            .ok_or_else(|| DecodeError::from("set element message shorter than nfgenmsg"))?;
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

/// A 4-byte value.
fn four(v: Option<&[u8]>) -> Option<[u8; 4]> {
    v.and_then(|v| <[u8; 4]>::try_from(v).ok())
}

/// One element's key and goto target.
fn element(attrs: &[u8]) -> Result<Option<(u32, String)>, DecodeError> {
    // Marks, numgen and jhash results are host-order 32-bit integers.
    let key = match find(attrs, NFTA_SET_ELEM_KEY)? {
        Some(k) => four(find(k, NFTA_DATA_VALUE)?).map(u32::from_ne_bytes),
        None => None,
    };
    let verdict = match find(attrs, NFTA_SET_ELEM_DATA)? {
        Some(d) => find(d, NFTA_DATA_VERDICT)?,
        None => None,
    };
    let target = match verdict {
        Some(v) => {
            let code = four(find(v, NFTA_VERDICT_CODE)?).map(i32::from_be_bytes);
            let chain = find(v, NFTA_VERDICT_CHAIN)?.map(|c| {
                let s = c.split(|b| *b == 0).next().unwrap_or_default();
                String::from_utf8_lossy(s).into_owned()
            });
            chain.filter(|_| code == Some(NFT_GOTO))
        }
        None => None,
    };
    Ok(key.zip(target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkBuffer, NetlinkMessage, NetlinkPayload};
    use netlink_packet_netfilter::nftables::{
        DataAttribute, ListAttribute, NfTablesMessage, SetElementAttribute, SetElementList,
        SetElementMessage, Verdict, VerdictAttribute,
    };
    use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

    /// A NEWSETELEM message as the crate emits it (the same layout as the kernel's dump).
    fn message(elements: Vec<ListAttribute<SetElementAttribute>>) -> Vec<u8> {
        let m = NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
            NfTablesMessage::NewSetElement(SetElementMessage {
                attributes: vec![
                    SetElementList::Table("multiwan".into()),
                    SetElementList::Set("m_policy_default".into()),
                    SetElementList::Elements(elements),
                ],
            }),
        );
        let mut nl = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(m));
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        buf
    }

    fn parse(bytes: &[u8]) -> ElementsMsg {
        let b = NetlinkBuffer::new(bytes);
        let mut header = NetlinkHeader::default();
        header.message_type = b.message_type();
        ElementsMsg::deserialize(&header, b.payload()).expect("parses")
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
