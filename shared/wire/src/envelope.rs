//! The versioned envelope, and the only code in the project that knows postcard.
//!
//! Layout (little-endian): `magic: [u8; 4] = b"SBST"`, `version: u16`, `kind: u16`,
//! then the postcard-encoded body to the end of the message. An unknown magic,
//! version or kind is refused with an error naming it; a body that does not decode
//! completely (trailing bytes included) is refused too.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The four bytes every Substruct message starts with.
pub const MAGIC: [u8; 4] = *b"SBST";
/// The newest wire version this build writes. Each kind is written in its own
/// [`WireMessage::VERSION`] (the version in which its shape last changed), so a change to
/// one kind does not make older readers refuse every other kind; every version in
/// [`SUPPORTED_VERSIONS`] up to a kind's own is read.
pub const WIRE_VERSION: u16 = 3;
/// Versions this build can read.
pub const SUPPORTED_VERSIONS: &[u16] = &[1, 2, 3];
/// Header length in bytes.
pub const HEADER_LEN: usize = 8;
/// Upper bound on an encoded message (NATS default max_payload is 1 MiB).
pub const MAX_MESSAGE_LEN: usize = 1024 * 1024;

/// The kind of body an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MessageKind {
    DiscoverRequest = 1,
    DiscoverReply = 2,
    ErrorReply = 3,
    Command = 4,
    SiteEvent = 5,
    BootIntent = 6,
    CallbackRequest = 7,
    CallbackReply = 8,
    InstallFiles = 9,
    PowerRequest = 10,
    PowerResult = 11,
    BmcSettings = 12,
    PowerAck = 13,
}

impl MessageKind {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::DiscoverRequest,
            2 => Self::DiscoverReply,
            3 => Self::ErrorReply,
            4 => Self::Command,
            5 => Self::SiteEvent,
            6 => Self::BootIntent,
            7 => Self::CallbackRequest,
            8 => Self::CallbackReply,
            9 => Self::InstallFiles,
            10 => Self::PowerRequest,
            11 => Self::PowerResult,
            12 => Self::BmcSettings,
            13 => Self::PowerAck,
            _ => return None,
        })
    }
}

/// A body type that travels in an envelope.
pub trait WireMessage: Serialize + DeserializeOwned {
    const KIND: MessageKind;
    /// The wire version this kind is written in: the one in which its shape last
    /// changed. A body of a newer version is refused (this build cannot know its shape).
    const VERSION: u16 = 1;

    /// Decodes a body written in an older `version` than [`Self::VERSION`] (one whose
    /// shape differs): kinds that changed shape override this.
    fn take_older(version: u16, body: &[u8]) -> Result<(Self, &[u8]), postcard::Error> {
        let _ = version;
        postcard::take_from_bytes::<Self>(body)
    }
}

/// Why bytes were refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("message is {0} bytes, shorter than the {HEADER_LEN}-byte envelope header")]
    Truncated(usize),
    #[error("message is {0} bytes, more than the {MAX_MESSAGE_LEN}-byte limit")]
    TooLarge(usize),
    #[error("bad magic {0:02x?}: not a Substruct message")]
    BadMagic([u8; 4]),
    #[error("unsupported wire version {0} (this build reads {SUPPORTED_VERSIONS:?})")]
    UnsupportedVersion(u16),
    #[error("unknown message kind {0}")]
    UnknownKind(u16),
    #[error("{kind:?} in wire version {version}: this build reads it up to version {newest}")]
    NewerKind {
        kind: MessageKind,
        version: u16,
        newest: u16,
    },
    #[error("expected a {expected:?} message, got {got:?}")]
    WrongKind {
        expected: MessageKind,
        got: MessageKind,
    },
    #[error("{kind:?} body does not decode")]
    Body {
        kind: MessageKind,
        #[source]
        source: postcard::Error,
    },
    #[error("{kind:?} body has {0} trailing bytes", .trailing)]
    TrailingBytes { kind: MessageKind, trailing: usize },
    #[error("{kind:?} body does not encode")]
    Encode {
        kind: MessageKind,
        #[source]
        source: postcard::Error,
    },
}

/// A checked header and a borrowed body.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub version: u16,
    pub kind: MessageKind,
    pub body: &'a [u8],
}

/// Encodes `msg` in a current-version envelope.
pub fn encode<M: WireMessage>(msg: &M) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&M::VERSION.to_le_bytes());
    out.extend_from_slice(&(M::KIND as u16).to_le_bytes());
    let out = postcard::to_extend(msg, out).map_err(|source| WireError::Encode {
        kind: M::KIND,
        source,
    })?;
    if out.len() > MAX_MESSAGE_LEN {
        return Err(WireError::TooLarge(out.len()));
    }
    Ok(out)
}

/// Checks the header and returns it with the body, without decoding the body.
pub fn peek(bytes: &[u8]) -> Result<Envelope<'_>, WireError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let (header, body) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(WireError::Truncated(bytes.len()))?;
    let magic = [header[0], header[1], header[2], header[3]];
    if magic != MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([header[4], header[5]]);
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(WireError::UnsupportedVersion(version));
    }
    let raw_kind = u16::from_le_bytes([header[6], header[7]]);
    let kind = MessageKind::from_u16(raw_kind).ok_or(WireError::UnknownKind(raw_kind))?;
    Ok(Envelope {
        version,
        kind,
        body,
    })
}

/// Decodes a message of type `M`, refusing any other kind, version or trailing bytes.
pub fn decode<M: WireMessage>(bytes: &[u8]) -> Result<M, WireError> {
    let env = peek(bytes)?;
    if env.kind != M::KIND {
        return Err(WireError::WrongKind {
            expected: M::KIND,
            got: env.kind,
        });
    }
    if env.version > M::VERSION {
        return Err(WireError::NewerKind {
            kind: M::KIND,
            version: env.version,
            newest: M::VERSION,
        });
    }
    let taken = if env.version == M::VERSION {
        postcard::take_from_bytes::<M>(env.body)
    } else {
        M::take_older(env.version, env.body)
    };
    let (msg, rest) = taken.map_err(|source| WireError::Body {
        kind: M::KIND,
        source,
    })?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes {
            kind: M::KIND,
            trailing: rest.len(),
        });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::ids::{BootToken, Mac, MachineId, SiteId};
    use crate::intent::{BootIntent, BootIntentRecord, LocalBootWay};
    use crate::messages::{
        DeployImage, DiscoverReply, DiscoverRequest, Instruction, SiteEvent, SiteEventKind,
    };
    use crate::report::*;

    fn sample_report() -> HardwareReport {
        HardwareReport {
            prospector_version: "0.1.0".into(),
            boot_mode: BootMode::Uefi,
            dmi: Dmi {
                sys_vendor: Some("QEMU".into()),
                product_serial: Some("S1".into()),
                product_uuid: Some("11111111-2222-3333-4444-555555555555".into()),
                ..Dmi::default()
            },
            cpu: Cpu {
                model: Some("QEMU Virtual CPU".into()),
                sockets: 1,
                cores: 2,
                threads: 2,
                virtualization: None,
                microcode: None,
                flags: vec!["aes".into()],
            },
            memory: Memory {
                total_bytes: 512 << 20,
                dimms: vec![],
            },
            disks: vec![Disk {
                name: "vda".into(),
                size_bytes: 1 << 30,
                serial: Some("D1".into()),
                transport: DiskTransport::Virtio,
                ..Disk::default()
            }],
            nics: vec![Nic {
                name: "eth0".into(),
                mac: Mac([0x52, 0x54, 0, 0, 0, 1]),
                driver: Some("virtio_net".into()),
                pci_address: None,
                speed_mbps: None,
                carrier: Some(true),
            }],
            pci: vec![PciDevice {
                address: "0000:00:03.0".into(),
                vendor_id: 0x1af4,
                device_id: 0x1000,
                class: 0x020000,
            }],
            bmc: None,
            secure_boot: Some(true),
        }
    }

    /// Wire version 1 (before `bmc`): still decodes, with `bmc: None` and
    /// `secure_boot: None`.
    const GOLDEN_DISCOVER_REQUEST_V1: &str = "53425354010001000273310102743005302e312e3001010451454d55000001025331012431313131313131312d323232322d333333332d343434342d35353535353535353535353500000000000000000000011051454d55205669727475616c204350550102020000010361657380808080020001037664618080808004000102443100000400010465746830525400000001010a76697274696f5f6e657400000101010c303030303a30303a30332e30f4358020808008";

    /// Pins today's encoding: if this fails, the wire format changed and
    /// [`WIRE_VERSION`] must go up (and old versions stay readable).
    #[test]
    fn golden_bytes_discover_reply() {
        let msg = DiscoverReply {
            machine_id: MachineId::new("m-1").unwrap(),
            instruction: Instruction::Reboot,
        };
        let bytes = encode(&msg).unwrap();
        assert_eq!(
            bytes,
            [b'S', b'B', b'S', b'T', 1, 0, 2, 0, 3, b'm', b'-', b'1', 2]
        );
        assert_eq!(decode::<DiscoverReply>(&bytes).unwrap(), msg);
    }

    #[test]
    fn golden_bytes_boot_intent() {
        let msg = BootIntentRecord {
            machine_id: None,
            intent: BootIntent::Local {
                way: LocalBootWay::NoBootFile,
            },
        };
        assert_eq!(
            encode(&msg).unwrap(),
            [b'S', b'B', b'S', b'T', 1, 0, 6, 0, 0, 2, 1]
        );
    }

    #[test]
    fn golden_bytes_discover_request() {
        let msg = DiscoverRequest {
            site: SiteId::new("s1").unwrap(),
            boot_token: Some(crate::BootCredential::new("t0").unwrap()),
            report: sample_report(),
        };
        let bytes = encode(&msg).unwrap();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        // Version 3: the v1 body, then `bmc` (None: one zero byte), then `secure_boot`
        // (Some(true): `01 01`).
        let v3 = format!(
            "{}0300{}000101",
            &GOLDEN_DISCOVER_REQUEST_V1[..8],
            &GOLDEN_DISCOVER_REQUEST_V1[12..]
        );
        assert_eq!(hex, v3);
        assert_eq!(decode::<DiscoverRequest>(&bytes).unwrap(), msg);
        let unhex = |hex: &str| -> Vec<u8> {
            (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect()
        };
        // Older reports decode with what they did not carry as `None`.
        let mut old = msg.clone();
        old.report.secure_boot = None;
        let v1 = unhex(GOLDEN_DISCOVER_REQUEST_V1);
        assert_eq!(decode::<DiscoverRequest>(&v1).unwrap(), old, "a v1 report");
        // Version 2: the v1 body, then `bmc`.
        let v2 = unhex(&format!(
            "{}0200{}00",
            &GOLDEN_DISCOVER_REQUEST_V1[..8],
            &GOLDEN_DISCOVER_REQUEST_V1[12..]
        ));
        assert_eq!(decode::<DiscoverRequest>(&v2).unwrap(), old, "a v2 report");
        // A body labelled with another version than its own does not decode into garbage.
        for (body, version) in [(&bytes, 1), (&bytes, 2), (&v2, 1), (&v2, 3), (&v1, 3)] {
            let mut mislabelled = body.clone();
            mislabelled[4] = version;
            assert!(
                decode::<DiscoverRequest>(&mislabelled).is_err(),
                "a v{} body labelled v{version}",
                body[4]
            );
        }
        // A version newer than this build knows is refused by name.
        let mut newer = bytes.clone();
        newer[4] = 4;
        assert!(matches!(
            decode::<DiscoverRequest>(&newer),
            Err(WireError::UnsupportedVersion(4))
        ));
        // Other kinds stay at version 1, which older readers take (golden_bytes_discover_reply).
    }

    #[test]
    fn a_report_with_a_bmc_round_trips() {
        let mut report = sample_report();
        report.bmc = Some(Bmc {
            ipmi_version: Some("2.0".into()),
            manufacturer_id: Some(674),
            firmware: Some("1.2".into()),
            lan: vec![BmcLan {
                channel: 1,
                ip: Some("10.77.0.250".parse().unwrap()),
                ip_source: Some("static".into()),
                mac: Some(Mac([0x52, 0x54, 0, 0x77, 0x40, 0x99])),
                netmask: Some("255.255.255.0".parse().unwrap()),
                gateway: None,
            }],
        });
        let msg = DiscoverRequest {
            site: SiteId::new("s1").unwrap(),
            boot_token: None,
            report,
        };
        assert_eq!(
            decode::<DiscoverRequest>(&encode(&msg).unwrap()).unwrap(),
            msg
        );
    }

    /// The image fields (typed [`crate::ImageName`] / [`crate::Sha256Digest`]) encode as
    /// the plain strings they replaced.
    #[test]
    fn golden_bytes_image_fields() {
        let sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let deploy = DiscoverReply {
            machine_id: MachineId::new("m-1").unwrap(),
            instruction: Instruction::DeployImage(DeployImage {
                path: "d/x.img".try_into().unwrap(),
                sha256: sha.try_into().unwrap(),
                size: 5,
                disk: Some("vda".into()),
                token: BootToken::new("t0").unwrap(),
            }),
        };
        let install = BootIntentRecord {
            machine_id: None,
            intent: BootIntent::Install {
                kernel: "k/linux".try_into().unwrap(),
                initrd: "k/initrd".try_into().unwrap(),
                cmdline: "c".into(),
            },
        };
        let cache = SiteEvent {
            site: SiteId::new("s1").unwrap(),
            at_unix_ms: 1,
            event: SiteEventKind::Cache {
                sha256: vec![sha.try_into().unwrap()],
            },
        };
        let hex = |bytes: Vec<u8>| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
        let sha_hex: String = sha.bytes().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex(encode(&deploy).unwrap()),
            format!("5342535401000200036d2d310307642f782e696d6740{sha_hex}050103766461027430")
        );
        assert_eq!(
            hex(encode(&install).unwrap()),
            "53425354010006000001076b2f6c696e7578086b2f696e697472640163"
        );
        assert_eq!(
            hex(encode(&cache).unwrap()),
            format!("5342535401000500027331010301{}{sha_hex}", "40")
        );
        assert_eq!(
            decode::<DiscoverReply>(&encode(&deploy).unwrap()).unwrap(),
            deploy
        );
        assert_eq!(
            decode::<BootIntentRecord>(&encode(&install).unwrap()).unwrap(),
            install
        );
        assert_eq!(
            decode::<SiteEvent>(&encode(&cache).unwrap()).unwrap(),
            cache
        );

        // The hostile forms, same lengths: a path out of the image directory, an
        // uppercase digest, a kernel name with a space. None of them decodes.
        let swap = |bytes: Vec<u8>, from: &[u8], to: &[u8]| -> Vec<u8> {
            let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
            let mut out = bytes;
            out[at..at + from.len()].copy_from_slice(to);
            out
        };
        let bad_path = swap(encode(&deploy).unwrap(), b"d/x.img", b"../x.im");
        assert!(decode::<DiscoverReply>(&bad_path).is_err());
        let bad_digest = swap(encode(&cache).unwrap(), b"e3b0", b"E3B0");
        assert!(decode::<SiteEvent>(&bad_digest).is_err());
        let bad_kernel = swap(encode(&install).unwrap(), b"k/linux", b"k/li ux");
        assert!(decode::<BootIntentRecord>(&bad_kernel).is_err());
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let good = encode(&DiscoverReply {
            machine_id: MachineId::new("m-1").unwrap(),
            instruction: Instruction::Wait,
        })
        .unwrap();

        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(matches!(
            decode::<DiscoverReply>(&bad_magic),
            Err(WireError::BadMagic(_))
        ));

        let mut v9 = good.clone();
        v9[4] = 9;
        let err = decode::<DiscoverReply>(&v9).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unsupported wire version 9 (this build reads [1, 2, 3])"
        );
        // A known version that is newer than this build's shape of the kind.
        let mut v2 = good.clone();
        v2[4] = 2;
        assert_eq!(
            decode::<DiscoverReply>(&v2).unwrap_err().to_string(),
            "DiscoverReply in wire version 2: this build reads it up to version 1"
        );

        let mut k99 = good.clone();
        k99[6] = 99;
        assert_eq!(
            decode::<DiscoverReply>(&k99).unwrap_err().to_string(),
            "unknown message kind 99"
        );

        assert!(matches!(
            decode::<DiscoverRequest>(&good),
            Err(WireError::WrongKind { .. })
        ));
        assert!(matches!(
            decode::<DiscoverReply>(&good[..5]),
            Err(WireError::Truncated(5))
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert!(matches!(
            decode::<DiscoverReply>(&trailing),
            Err(WireError::TrailingBytes { trailing: 1, .. })
        ));
        // An invalid id inside a well-formed envelope is refused by validation.
        let mut bad_id = good.clone();
        bad_id[9] = b'M';
        assert!(matches!(
            decode::<DiscoverReply>(&bad_id),
            Err(WireError::Body { .. })
        ));
    }

    fn arb_opt_string() -> impl Strategy<Value = Option<String>> {
        proptest::option::of("[ -~]{0,24}")
    }

    prop_compose! {
        fn arb_report()(
            serial in arb_opt_string(),
            uuid in arb_opt_string(),
            model in arb_opt_string(),
            total in any::<u64>(),
            macs in proptest::collection::vec(any::<[u8; 6]>(), 0..4),
            disks in proptest::collection::vec(("[a-z]{1,8}", any::<u64>(), arb_opt_string(), any::<bool>()), 0..4),
            secure_boot in proptest::option::of(any::<bool>()),
        ) -> HardwareReport {
            HardwareReport {
                prospector_version: "x".into(),
                boot_mode: BootMode::Bios,
                dmi: Dmi { product_serial: serial, product_uuid: uuid, ..Dmi::default() },
                cpu: Cpu { model, ..Cpu::default() },
                memory: Memory { total_bytes: total, dimms: vec![] },
                disks: disks.into_iter().map(|(name, size_bytes, serial, rotational)| Disk {
                    name, size_bytes, serial, rotational, ..Disk::default()
                }).collect(),
                nics: macs.into_iter().enumerate().map(|(i, m)| Nic {
                    name: format!("eth{i}"), mac: Mac(m), driver: None, pci_address: None,
                    speed_mbps: Some(1000), carrier: None,
                }).collect(),
                pci: vec![],
                bmc: None,
                secure_boot,
            }
        }
    }

    proptest! {
        #[test]
        fn discover_request_round_trips(report in arb_report(), site in "[a-z][a-z0-9-]{0,31}") {
            let msg = DiscoverRequest { site: SiteId::new(site).unwrap(), boot_token: None, report };
            let bytes = encode(&msg).unwrap();
            prop_assert_eq!(decode::<DiscoverRequest>(&bytes).unwrap(), msg);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<DiscoverRequest>(&bytes);
            let mut framed = MAGIC.to_vec();
            framed.extend_from_slice(&[1, 0, 1, 0]);
            framed.extend_from_slice(&bytes);
            let _ = decode::<DiscoverRequest>(&framed);
            framed[4] = 2;
            let _ = decode::<DiscoverRequest>(&framed);
            framed[4] = 3;
            let _ = decode::<DiscoverRequest>(&framed);
        }
    }
}
