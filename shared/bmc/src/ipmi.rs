//! IPMI 2.0 over LAN (RMCP+) on a plain UDP socket.
//!
//! The session follows the IPMI 2.0 specification (section 13): Get Channel
//! Authentication Capabilities, Open Session, RAKP messages 1 to 4 (the BMC's key
//! exchange code and integrity check value are verified, in constant time), then
//! every command travels authenticated (HMAC-SHA1-96 or HMAC-SHA256-128 with K1) and
//! encrypted (AES-CBC-128 with the first 16 bytes of K2, a fresh IV per packet),
//! with our own session sequence number. Cipher suites 3 (SHA1) and 17 (SHA256).
//!
//! Every UDP exchange waits `timeout` and is retried `retries` times; replies that
//! do not parse, fail their integrity check or answer another request are dropped
//! and remembered, so that a "BMC" that only sends garbage ends in
//! [`BmcError::Protocol`] rather than a timeout. Nothing here panics on input.

use std::net::SocketAddr;
use std::time::Duration;

use aes::cipher::{block_padding::NoPadding, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use hmac::{Hmac, Mac};
use rand::RngCore;
use subtle::ConstantTimeEq;
use tokio::net::UdpSocket;

use crate::{BmcConfig, BmcError, BootDevice, PowerAction, PowerState, Secret};

/// The IPMI-over-LAN UDP port.
pub const DEFAULT_PORT: u16 = 623;

/// The largest datagram we accept.
const MAX_DATAGRAM: usize = 1024;

const NETFN_CHASSIS: u8 = 0x00;
const NETFN_APP: u8 = 0x06;
const CMD_GET_CHANNEL_AUTH_CAP: u8 = 0x38;
const CMD_SET_SESSION_PRIV: u8 = 0x3B;
const CMD_CLOSE_SESSION: u8 = 0x3C;
const CMD_GET_CHASSIS_STATUS: u8 = 0x01;
const CMD_CHASSIS_CONTROL: u8 = 0x02;
const CMD_SET_BOOT_OPTIONS: u8 = 0x08;
const CMD_GET_BOOT_OPTIONS: u8 = 0x09;

const PAYLOAD_IPMI: u8 = 0x00;
const PAYLOAD_OPEN_SESSION_REQ: u8 = 0x10;
const PAYLOAD_OPEN_SESSION_RSP: u8 = 0x11;
const PAYLOAD_RAKP1: u8 = 0x12;
const PAYLOAD_RAKP2: u8 = 0x13;
const PAYLOAD_RAKP3: u8 = 0x14;
const PAYLOAD_RAKP4: u8 = 0x15;

/// Administrator, with name-only lookup (bit 4).
const ROLE_ADMIN_NAME_ONLY: u8 = 0x14;
const BMC_ADDR: u8 = 0x20;
const SOFTWARE_ID: u8 = 0x81;

/// A short text for an IPMI completion code (IPMI 2.0, table 5-2).
pub fn completion_code_text(cc: u8) -> &'static str {
    match cc {
        0x00 => "success",
        0xC0 => "node busy",
        0xC1 => "invalid command",
        0xC2 => "command invalid for this LUN",
        0xC3 => "timeout while processing",
        0xC4 => "out of space",
        0xC5 => "reservation cancelled or invalid",
        0xC6 => "request data truncated",
        0xC7 => "request data length invalid",
        0xC8 => "request data field length limit exceeded",
        0xC9 => "parameter out of range",
        0xCA => "cannot return the number of requested bytes",
        0xCB => "requested sensor, data or record not present",
        0xCC => "invalid data field in request",
        0xCD => "command illegal for this sensor or record type",
        0xCE => "command response could not be provided",
        0xCF => "cannot execute a duplicated request",
        0xD0 => "SDR repository in update mode",
        0xD1 => "device in firmware update mode",
        0xD2 => "BMC initialization in progress",
        0xD3 => "destination unavailable",
        0xD4 => "insufficient privilege level",
        0xD5 => "not supported in present state",
        0xD6 => "sub-function disabled or unavailable",
        0xFF => "unspecified error",
        _ => "device-specific or unknown code",
    }
}

/// The RMCP+ status code of Open Session / RAKP replies (IPMI 2.0, table 13-15).
fn rmcpp_status_text(code: u8) -> &'static str {
    match code {
        0x01 => "insufficient resources to create a session",
        0x02 => "invalid session id",
        0x03 => "invalid payload type",
        0x04 => "invalid authentication algorithm",
        0x05 => "invalid integrity algorithm",
        0x06 => "no matching authentication payload",
        0x07 => "no matching integrity payload",
        0x08 => "inactive session id",
        0x09 => "invalid role",
        0x0A => "unauthorized role or privilege level requested",
        0x0B => "insufficient resources to create a session at the requested role",
        0x0C => "invalid name length",
        0x0D => "unauthorized name",
        0x0E => "unauthorized GUID",
        0x0F => "invalid integrity check value",
        0x10 => "invalid confidentiality algorithm",
        0x11 => "no cipher suite match with proposed security algorithms",
        0x12 => "illegal or unrecognized parameter",
        _ => "unknown status",
    }
}

/// The algorithms of a cipher suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Suite {
    /// Suite 3: RAKP-HMAC-SHA1, HMAC-SHA1-96, AES-CBC-128.
    Sha1,
    /// Suite 17: RAKP-HMAC-SHA256, HMAC-SHA256-128, AES-CBC-128.
    Sha256,
}

impl Suite {
    fn from_id(id: u8) -> Result<Self, BmcError> {
        match id {
            3 => Ok(Self::Sha1),
            17 => Ok(Self::Sha256),
            other => Err(BmcError::Config(format!(
                "IPMI cipher suite {other} is not supported; use 3 (SHA1) or 17 (SHA256)"
            ))),
        }
    }

    /// (authentication, integrity, confidentiality) algorithm numbers.
    fn algorithms(self) -> (u8, u8, u8) {
        match self {
            Self::Sha1 => (0x01, 0x01, 0x01),
            Self::Sha256 => (0x03, 0x04, 0x01),
        }
    }

    fn hmac(self, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
            // HMAC accepts keys of any length.
            let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
                return Vec::new();
            };
            for p in parts {
                mac.update(p);
            }
            mac.finalize().into_bytes().to_vec()
        }
        match self {
            Self::Sha1 => run::<Hmac<sha1::Sha1>>(key, parts),
            Self::Sha256 => run::<Hmac<sha2::Sha256>>(key, parts),
        }
    }

    /// Length of the RAKP 2/3 key exchange authentication code.
    fn auth_code_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 => 32,
        }
    }

    /// Length of the RAKP 4 integrity check value and of each packet's AuthCode.
    fn integrity_len(self) -> usize {
        match self {
            Self::Sha1 => 12,
            Self::Sha256 => 16,
        }
    }
}

/// An established RMCP+ session.
#[derive(Clone)]
struct Session {
    /// Our (remote console) session id: the BMC puts it on its packets.
    console_id: u32,
    /// The BMC's (managed system) session id: we put it on ours.
    bmc_id: u32,
    /// Our outbound session sequence number (next to use).
    seq: u32,
    /// The highest sequence number the BMC used so far: an authenticated packet
    /// at or below it is a replay and is dropped.
    inbound_high: u32,
    k1: Vec<u8>,
    aes_key: [u8; 16],
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("console_id", &format_args!("{:#010x}", self.console_id))
            .field("bmc_id", &format_args!("{:#010x}", self.bmc_id))
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

/// A client for one BMC over IPMI 2.0 LAN. Made by [`crate::Bmc::connect`] or
/// [`IpmiClient::connect`].
#[derive(Debug)]
pub struct IpmiClient {
    address: String,
    sock: UdpSocket,
    user: String,
    password: Secret,
    suite: Suite,
    timeout: Duration,
    retries: u32,
    session: Option<Session>,
    rq_seq: u8,
}

/// A reply to one request, before interpretation.
enum Exchange {
    /// The datagram answered the request.
    Done(Vec<u8>),
    /// The datagram was for something else (or unreadable): keep waiting.
    Skip(String),
}

impl IpmiClient {
    /// Resolves the address, checks the channel speaks IPMI 2.0 and opens a session
    /// at the administrator level.
    pub async fn connect(cfg: &BmcConfig) -> Result<Self, BmcError> {
        let suite = Suite::from_id(cfg.ipmi_cipher_suite)?;
        let target = resolve(&cfg.address).await?;
        let bind: SocketAddr = if target.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let unreachable = |e: std::io::Error| BmcError::Unreachable {
            address: cfg.address.clone(),
            detail: e.to_string(),
        };
        let sock = UdpSocket::bind(bind).await.map_err(unreachable)?;
        sock.connect(target).await.map_err(unreachable)?;
        let mut client = Self {
            address: cfg.address.clone(),
            sock,
            user: cfg.user.clone(),
            password: cfg.password.clone(),
            suite,
            timeout: cfg.timeout,
            retries: cfg.retries,
            session: None,
            rq_seq: 0,
        };
        if cfg.user.len() > 16 {
            return Err(BmcError::Config(
                "IPMI user names have at most 16 characters".to_owned(),
            ));
        }
        if cfg.password.expose().len() > 20 {
            return Err(BmcError::Config(
                "IPMI 2.0 passwords have at most 20 characters".to_owned(),
            ));
        }
        client.channel_auth_capabilities().await?;
        client.open_session().await?;
        Ok(client)
    }

    /// The per-attempt timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Get Chassis Status: bit 0 of the current power state.
    pub async fn power_state(&mut self) -> Result<PowerState, BmcError> {
        let data = self
            .command(
                "Get Chassis Status",
                NETFN_CHASSIS,
                CMD_GET_CHASSIS_STATUS,
                &[],
            )
            .await?;
        let byte = data.first().ok_or_else(|| {
            self.protocol("Get Chassis Status reply carries no power state".to_owned())
        })?;
        Ok(if byte & 0x01 != 0 {
            PowerState::On
        } else {
            PowerState::Off
        })
    }

    /// Chassis Control: up, down (hard), soft shutdown (ACPI), power cycle.
    pub async fn power(&mut self, action: PowerAction) -> Result<(), BmcError> {
        let control = match action {
            PowerAction::On => 0x01,
            PowerAction::Off => 0x00,
            PowerAction::Cycle => 0x02,
            PowerAction::SoftOff => 0x05,
        };
        self.command(
            "Chassis Control",
            NETFN_CHASSIS,
            CMD_CHASSIS_CONTROL,
            &[control],
        )
        .await?;
        Ok(())
    }

    /// Set System Boot Options, parameter 5 (boot flags): valid, next boot only,
    /// device PXE (0001b) or default hard drive (0010b).
    pub async fn set_next_boot(&mut self, dev: BootDevice) -> Result<(), BmcError> {
        let selector: u8 = match dev {
            BootDevice::Pxe => 0x01,
            BootDevice::Disk => 0x02,
        };
        let data = [0x05, 0x80, selector << 2, 0x00, 0x00, 0x00];
        self.command(
            "Set System Boot Options",
            NETFN_CHASSIS,
            CMD_SET_BOOT_OPTIONS,
            &data,
        )
        .await?;
        Ok(())
    }

    /// Get System Boot Options, parameter 5: the device when the valid bit is set.
    pub async fn next_boot(&mut self) -> Result<Option<BootDevice>, BmcError> {
        let data = self
            .command(
                "Get System Boot Options",
                NETFN_CHASSIS,
                CMD_GET_BOOT_OPTIONS,
                &[0x05, 0x00, 0x00],
            )
            .await?;
        // version, parameter, then the 5 data bytes of the boot flags.
        let (Some(&flags), Some(&device)) = (data.get(2), data.get(3)) else {
            return Err(self.protocol(format!(
                "Get System Boot Options reply has {} bytes, expected at least 4",
                data.len()
            )));
        };
        if flags & 0x80 == 0 {
            return Ok(None);
        }
        Ok(match (device >> 2) & 0x0f {
            0x01 => Some(BootDevice::Pxe),
            0x02 => Some(BootDevice::Disk),
            _ => None,
        })
    }

    /// Close Session; best effort.
    pub async fn close(mut self) {
        let Some(session) = self.session.clone() else {
            return;
        };
        self.retries = 0;
        if let Err(e) = self
            .command_once(
                "Close Session",
                NETFN_APP,
                CMD_CLOSE_SESSION,
                &session.bmc_id.to_le_bytes(),
            )
            .await
        {
            tracing::debug!(bmc = %self.address, error = %e, "closing the IPMI session failed");
        }
    }

    fn protocol(&self, detail: String) -> BmcError {
        BmcError::Protocol {
            address: self.address.clone(),
            detail,
        }
    }

    fn next_rq_seq(&mut self) -> u8 {
        self.rq_seq = (self.rq_seq + 1) & 0x3f;
        self.rq_seq
    }

    /// Get Channel Authentication Capabilities, as an IPMI 1.5 packet outside a
    /// session: proves something speaks IPMI there, and that it knows IPMI 2.0.
    async fn channel_auth_capabilities(&mut self) -> Result<(), BmcError> {
        let rq_seq = self.next_rq_seq();
        // Channel "this one" (0x0E) with the IPMI 2.0 extended data bit; admin level.
        let msg = ipmi_request(NETFN_APP, CMD_GET_CHANNEL_AUTH_CAP, rq_seq, &[0x8E, 0x04]);
        let mut packet = rmcp_header();
        packet.extend_from_slice(&[0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
        packet.push(u8::try_from(msg.len()).unwrap_or(u8::MAX));
        packet.extend_from_slice(&msg);
        let data = self
            .exchange(
                "Get Channel Authentication Capabilities",
                &[packet],
                |buf| parse_v15_reply(buf, CMD_GET_CHANNEL_AUTH_CAP, rq_seq),
            )
            .await?;
        let data = completion(
            &self.address,
            "Get Channel Authentication Capabilities",
            &data,
        )?;
        // channel, auth type support (bit 7: IPMI 2.0 extended data), status, ext caps.
        let ipmi20 =
            data.get(1).is_some_and(|b| b & 0x80 != 0) && data.get(3).is_none_or(|b| b & 0x02 != 0);
        if !ipmi20 {
            return Err(BmcError::Unsupported {
                address: self.address.clone(),
                what: "IPMI 2.0 (RMCP+) on this LAN channel".to_owned(),
            });
        }
        Ok(())
    }

    /// Open Session + RAKP 1..4.
    async fn open_session(&mut self) -> Result<(), BmcError> {
        let suite = self.suite;
        let (auth_alg, integ_alg, conf_alg) = suite.algorithms();
        // Odd or even, any non-zero id will do. (The generator is not Send: it must not
        // live across an await.)
        let (console_id, tag) = {
            let mut rng = rand::thread_rng();
            (rng.next_u32() | 1, (rng.next_u32() & 0xff) as u8)
        };

        // Open Session Request.
        let mut req = vec![tag, ROLE_ADMIN_NAME_ONLY & 0x0f, 0, 0];
        req.extend_from_slice(&console_id.to_le_bytes());
        req.extend_from_slice(&[0x00, 0, 0, 0x08, auth_alg, 0, 0, 0]);
        req.extend_from_slice(&[0x01, 0, 0, 0x08, integ_alg, 0, 0, 0]);
        req.extend_from_slice(&[0x02, 0, 0, 0x08, conf_alg, 0, 0, 0]);
        let rsp = self
            .presession(
                "Open Session",
                PAYLOAD_OPEN_SESSION_REQ,
                &req,
                PAYLOAD_OPEN_SESSION_RSP,
                tag,
            )
            .await?;
        if rsp.len() < 36 {
            return Err(self.protocol(format!(
                "Open Session reply has {} bytes, expected 36",
                rsp.len()
            )));
        }
        let echoed_console = le32(&rsp[4..8]);
        let bmc_id = le32(&rsp[8..12]);
        if echoed_console != console_id || bmc_id == 0 {
            return Err(self.protocol("Open Session reply names another session".to_owned()));
        }
        if rsp[16] != auth_alg || rsp[24] != integ_alg || rsp[32] != conf_alg {
            return Err(self.protocol(format!(
                "BMC chose algorithms {}/{}/{} instead of {auth_alg}/{integ_alg}/{conf_alg}",
                rsp[16], rsp[24], rsp[32]
            )));
        }

        // RAKP 1.
        let mut rm = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut rm);
        let user = self.user.as_bytes().to_vec();
        let ulen = u8::try_from(user.len()).unwrap_or(16);
        let mut rakp1 = vec![tag, 0, 0, 0];
        rakp1.extend_from_slice(&bmc_id.to_le_bytes());
        rakp1.extend_from_slice(&rm);
        rakp1.extend_from_slice(&[ROLE_ADMIN_NAME_ONLY, 0, 0, ulen]);
        rakp1.extend_from_slice(&user);
        let rakp2 = self
            .presession("RAKP 1", PAYLOAD_RAKP1, &rakp1, PAYLOAD_RAKP2, tag)
            .await?;
        let code_len = suite.auth_code_len();
        if rakp2.len() < 40 + code_len {
            return Err(self.protocol(format!(
                "RAKP 2 has {} bytes, expected {}",
                rakp2.len(),
                40 + code_len
            )));
        }
        if le32(&rakp2[4..8]) != console_id {
            return Err(self.protocol("RAKP 2 names another session".to_owned()));
        }
        let rc = &rakp2[8..24];
        let guid = &rakp2[24..40];
        let kuid = password_key(&self.password);
        let expect = suite.hmac(
            &kuid,
            &[
                &console_id.to_le_bytes(),
                &bmc_id.to_le_bytes(),
                &rm,
                rc,
                guid,
                &[ROLE_ADMIN_NAME_ONLY, ulen],
                &user,
            ],
        );
        if !bool::from(expect.ct_eq(&rakp2[40..40 + code_len])) {
            return Err(BmcError::AuthFailed {
                address: self.address.clone(),
                detail: format!(
                    "the BMC's RAKP 2 key exchange code does not match the password of user {:?}",
                    self.user
                ),
            });
        }
        let sik = suite.hmac(
            &kuid,
            &[rm.as_slice(), rc, &[ROLE_ADMIN_NAME_ONLY, ulen], &user],
        );
        let k1 = suite.hmac(&sik, &[&[0x01; 20]]);
        let k2 = suite.hmac(&sik, &[&[0x02; 20]]);
        let mut aes_key = [0u8; 16];
        if k2.len() < 16 {
            return Err(self.protocol("key derivation failed".to_owned()));
        }
        aes_key.copy_from_slice(&k2[..16]);

        // RAKP 3.
        let mut rakp3 = vec![tag, 0, 0, 0];
        rakp3.extend_from_slice(&bmc_id.to_le_bytes());
        rakp3.extend_from_slice(&suite.hmac(
            &kuid,
            &[
                rc,
                &console_id.to_le_bytes(),
                &[ROLE_ADMIN_NAME_ONLY, ulen],
                &user,
            ],
        ));
        let rakp4 = self
            .presession("RAKP 3", PAYLOAD_RAKP3, &rakp3, PAYLOAD_RAKP4, tag)
            .await?;
        let icv_len = suite.integrity_len();
        if rakp4.len() < 8 + icv_len || le32(&rakp4[4..8]) != console_id {
            return Err(self.protocol(format!(
                "RAKP 4 has {} bytes or names another session",
                rakp4.len()
            )));
        }
        let icv = suite.hmac(&sik, &[&rm, &bmc_id.to_le_bytes(), guid]);
        if !bool::from(icv[..icv_len].ct_eq(&rakp4[8..8 + icv_len])) {
            return Err(self.protocol(
                "RAKP 4 integrity check value does not match: the BMC derived other session keys"
                    .to_owned(),
            ));
        }
        self.session = Some(Session {
            console_id,
            bmc_id,
            seq: 1,
            inbound_high: 0,
            k1,
            aes_key,
        });
        // Sessions start at the User level; power control needs Administrator.
        self.command_once(
            "Set Session Privilege Level",
            NETFN_APP,
            CMD_SET_SESSION_PRIV,
            &[0x04],
        )
        .await?;
        tracing::debug!(bmc = %self.address, "IPMI session open");
        Ok(())
    }

    /// One pre-session exchange (Open Session, RAKP): sends `payload` as
    /// `req_type`, returns the reply of `rsp_type` carrying `tag` once its status
    /// byte says success.
    async fn presession(
        &self,
        what: &str,
        req_type: u8,
        payload: &[u8],
        rsp_type: u8,
        tag: u8,
    ) -> Result<Vec<u8>, BmcError> {
        let packet = presession_packet(req_type, payload);
        let reply = self
            .exchange(what, &[packet], |buf| {
                presession_payload(buf, rsp_type, tag)
            })
            .await?;
        self.rmcpp_status(what, &reply)?;
        Ok(reply)
    }

    /// An RMCP+ status byte (second byte of Open Session / RAKP replies).
    fn rmcpp_status(&self, what: &str, payload: &[u8]) -> Result<(), BmcError> {
        let Some(&status) = payload.get(1) else {
            return Err(self.protocol(format!("{what} reply is empty")));
        };
        let text = format!(
            "{what}: {} (status {status:#04x})",
            rmcpp_status_text(status)
        );
        match status {
            0 => Ok(()),
            0x09 | 0x0A | 0x0C | 0x0D | 0x0E | 0x0F => Err(BmcError::AuthFailed {
                address: self.address.clone(),
                detail: text,
            }),
            0x01 | 0x0B => Err(BmcError::Busy {
                address: self.address.clone(),
                detail: text,
            }),
            0x04 | 0x05 | 0x10 | 0x11 => Err(BmcError::Unsupported {
                address: self.address.clone(),
                what: format!(
                    "cipher suite {} ({text}); try the other suite (3 or 17)",
                    match self.suite {
                        Suite::Sha1 => 3,
                        Suite::Sha256 => 17,
                    }
                ),
            }),
            _ => Err(self.protocol(text)),
        }
    }

    /// One IPMI command inside the session, as [`Self::command_once`]; when the BMC
    /// stays silent (it rebooted, or dropped an idle session) the session is opened
    /// again once and the command sent once more.
    async fn command(
        &mut self,
        what: &str,
        netfn: u8,
        cmd: u8,
        data: &[u8],
    ) -> Result<Vec<u8>, BmcError> {
        match self.command_once(what, netfn, cmd, data).await {
            Err(BmcError::Timeout { .. }) if self.session.is_some() => {
                tracing::info!(bmc = %self.address, what, "no answer inside the IPMI session; opening a new one");
                self.session = None;
                self.open_session().await?;
                self.command_once(what, netfn, cmd, data).await
            }
            other => other,
        }
    }

    /// One IPMI command inside the session; the reply's data after the completion
    /// code. Completion code 0xC0 is [`BmcError::Busy`], others [`BmcError::Command`].
    async fn command_once(
        &mut self,
        what: &str,
        netfn: u8,
        cmd: u8,
        data: &[u8],
    ) -> Result<Vec<u8>, BmcError> {
        let Some(mut session) = self.session.clone() else {
            return Err(self.protocol("no IPMI session".to_owned()));
        };
        let rq_seq = self.next_rq_seq();
        let msg = ipmi_request(netfn, cmd, rq_seq, data);
        // One packet per attempt, each with its own session sequence number.
        let mut packets = Vec::new();
        for _ in 0..=self.retries {
            packets.push(session_packet(self.suite, &session, &msg));
            session.seq = session.seq.wrapping_add(1).max(1);
        }
        let suite = self.suite;
        let keys = session.clone();
        let mut high = session.inbound_high;
        let reply = self
            .exchange(what, &packets, |buf| {
                match parse_session_reply(suite, &keys, buf, netfn, cmd, rq_seq) {
                    Ok((seq, _)) if seq <= high => {
                        Exchange::Skip(format!("replayed or stale packet (sequence {seq})"))
                    }
                    Ok((seq, data)) => {
                        high = seq;
                        Exchange::Done(data)
                    }
                    Err(why) => Exchange::Skip(why),
                }
            })
            .await;
        if let Some(s) = self.session.as_mut() {
            s.seq = session.seq;
            s.inbound_high = s.inbound_high.max(high);
        }
        completion(&self.address, what, &reply?)
    }

    /// Sends `packets[0]`, waits `timeout` for a datagram that `accept` takes, sends
    /// the next packet (or the last again) on timeout; at most `retries + 1` sends.
    async fn exchange<F>(
        &self,
        what: &str,
        packets: &[Vec<u8>],
        mut accept: F,
    ) -> Result<Vec<u8>, BmcError>
    where
        F: FnMut(&[u8]) -> Exchange,
    {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut last_junk: Option<String> = None;
        let attempts = self.retries.saturating_add(1);
        for attempt in 0..attempts {
            let idx = usize::try_from(attempt).unwrap_or(usize::MAX);
            let Some(packet) = packets.get(idx).or(packets.last()) else {
                return Err(self.protocol("nothing to send".to_owned()));
            };
            if let Err(e) = self.sock.send(packet).await {
                return Err(self.io_error(e));
            }
            let deadline = tokio::time::Instant::now() + self.timeout;
            loop {
                match tokio::time::timeout_at(deadline, self.sock.recv(&mut buf)).await {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(self.io_error(e)),
                    Ok(Ok(n)) => match accept(&buf[..n.min(buf.len())]) {
                        Exchange::Done(v) => return Ok(v),
                        Exchange::Skip(why) => {
                            tracing::debug!(bmc = %self.address, %why, "dropped an IPMI datagram");
                            last_junk = Some(why);
                        }
                    },
                }
            }
            tracing::debug!(bmc = %self.address, what, attempt, "IPMI request timed out");
        }
        match last_junk {
            Some(why) => Err(self.protocol(format!("no valid reply to {what}: {why}"))),
            None => Err(BmcError::Timeout {
                address: self.address.clone(),
                what: what.to_owned(),
                attempts,
            }),
        }
    }

    fn io_error(&self, e: std::io::Error) -> BmcError {
        BmcError::Unreachable {
            address: self.address.clone(),
            detail: if e.kind() == std::io::ErrorKind::ConnectionRefused {
                "nothing listens on its IPMI port (ICMP port unreachable)".to_owned()
            } else {
                e.to_string()
            },
        }
    }
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` to one socket address.
async fn resolve(address: &str) -> Result<SocketAddr, BmcError> {
    let with_port = if address.parse::<SocketAddr>().is_ok() {
        address.to_owned()
    } else if address.starts_with('[') && address.ends_with(']') {
        format!("{address}:{DEFAULT_PORT}")
    } else if address.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{address}]:{DEFAULT_PORT}")
    } else if address
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        address.to_owned()
    } else {
        format!("{address}:{DEFAULT_PORT}")
    };
    let mut addrs =
        tokio::net::lookup_host(&with_port)
            .await
            .map_err(|e| BmcError::Unreachable {
                address: address.to_owned(),
                detail: format!("cannot resolve {with_port:?}: {e}"),
            })?;
    addrs.next().ok_or_else(|| BmcError::Unreachable {
        address: address.to_owned(),
        detail: format!("{with_port:?} resolves to no address"),
    })
}

/// The password as the RAKP key: its bytes, zero-padded to 20.
fn password_key(password: &Secret) -> Vec<u8> {
    let mut key = password.expose().as_bytes().to_vec();
    key.resize(20, 0);
    key
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    for (dst, src) in a.iter_mut().zip(b) {
        *dst = *src;
    }
    u32::from_le_bytes(a)
}

/// Two's complement checksum: the bytes plus it sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |acc, b| acc.wrapping_add(*b))
        .wrapping_neg()
}

/// RMCP header: version 6, reserved, no RMCP ack, class IPMI.
fn rmcp_header() -> Vec<u8> {
    vec![0x06, 0x00, 0xFF, 0x07]
}

/// An IPMI LAN request message to the BMC.
fn ipmi_request(netfn: u8, cmd: u8, rq_seq: u8, data: &[u8]) -> Vec<u8> {
    let mut m = vec![BMC_ADDR, netfn << 2];
    m.push(checksum(&m));
    let body_start = m.len();
    m.extend_from_slice(&[SOFTWARE_ID, rq_seq << 2, cmd]);
    m.extend_from_slice(data);
    m.push(checksum(&m[body_start..]));
    m
}

/// Checks an IPMI LAN response message and returns (netfn, rq_seq, cmd, cc+data).
fn parse_ipmi_response(m: &[u8]) -> Result<(u8, u8, u8, Vec<u8>), String> {
    if m.len() < 8 {
        return Err(format!("IPMI message of {} bytes is too short", m.len()));
    }
    if checksum(&m[..2]) != m[2] {
        return Err("IPMI header checksum is wrong".to_owned());
    }
    let last = m.len() - 1;
    if checksum(&m[3..last]) != m[last] {
        return Err("IPMI data checksum is wrong".to_owned());
    }
    Ok((m[1] >> 2, m[4] >> 2, m[5], m[6..last].to_vec()))
}

/// Accepts a reply to `cmd` with `rq_seq` (response netfn = request netfn + 1).
fn match_response(m: &[u8], netfn: u8, cmd: u8, rq_seq: u8) -> Exchange {
    match parse_ipmi_response(m) {
        Err(e) => Exchange::Skip(e),
        Ok((rnetfn, rseq, rcmd, data)) => {
            if rnetfn != netfn | 1 || rcmd != cmd || rseq != rq_seq {
                Exchange::Skip(format!(
                    "reply to another request (netfn {rnetfn:#04x}, cmd {rcmd:#04x}, seq {rseq})"
                ))
            } else {
                Exchange::Done(data)
            }
        }
    }
}

/// An IPMI 1.5 session-less reply (Get Channel Authentication Capabilities).
fn parse_v15_reply(buf: &[u8], cmd: u8, rq_seq: u8) -> Exchange {
    if buf.len() < 14 || buf[..4] != [0x06, 0x00, 0xFF, 0x07] {
        return Exchange::Skip("not an RMCP/IPMI datagram".to_owned());
    }
    // Without authentication the length byte follows the 9-byte session header;
    // with it (MD2, MD5, password), a 16-byte AuthCode comes first.
    let len_at = match buf[4] {
        0x00 => 13,
        0x06 => return Exchange::Skip("RMCP+ datagram where IPMI 1.5 was expected".to_owned()),
        _ => 29,
    };
    let Some(&len) = buf.get(len_at) else {
        return Exchange::Skip("truncated IPMI 1.5 header".to_owned());
    };
    let Some(msg) = buf.get(len_at + 1..len_at + 1 + usize::from(len)) else {
        return Exchange::Skip("IPMI 1.5 message shorter than its length".to_owned());
    };
    match_response(msg, NETFN_APP, cmd, rq_seq)
}

/// An RMCP+ packet outside a session (Open Session, RAKP).
fn presession_packet(payload_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut p = rmcp_header();
    p.push(0x06);
    p.push(payload_type);
    p.extend_from_slice(&[0; 8]);
    p.extend_from_slice(&u16::try_from(payload.len()).unwrap_or(0).to_le_bytes());
    p.extend_from_slice(payload);
    p
}

/// The RMCP+ header of a datagram: (payload type byte, session id, seq, payload).
fn rmcpp_split(buf: &[u8]) -> Result<(u8, u32, u32, &[u8], usize), String> {
    if buf.len() < 16 || buf[..4] != [0x06, 0x00, 0xFF, 0x07] {
        return Err("not an RMCP datagram".to_owned());
    }
    if buf[4] & 0x0f != 0x06 {
        return Err(format!(
            "auth type {:#04x} where RMCP+ was expected",
            buf[4]
        ));
    }
    let ptype = buf[5];
    if ptype & 0x3f == 0x02 {
        return Err("OEM payloads are not expected".to_owned());
    }
    let sid = le32(&buf[6..10]);
    let seq = le32(&buf[10..14]);
    let len = usize::from(u16::from_le_bytes([buf[14], buf[15]]));
    let payload = buf
        .get(16..16 + len)
        .ok_or_else(|| format!("payload length {len} exceeds the datagram"))?;
    Ok((ptype, sid, seq, payload, 16 + len))
}

/// A pre-session reply of `want` type carrying our message tag.
fn presession_payload(buf: &[u8], want: u8, tag: u8) -> Exchange {
    match rmcpp_split(buf) {
        Err(e) => Exchange::Skip(e),
        Ok((ptype, _, _, payload, _)) => {
            if ptype & 0x3f != want {
                Exchange::Skip(format!("payload type {ptype:#04x}, expected {want:#04x}"))
            } else if payload.first() != Some(&tag) {
                Exchange::Skip("reply with another message tag".to_owned())
            } else {
                Exchange::Done(payload.to_vec())
            }
        }
    }
}

/// An authenticated, encrypted IPMI request inside the session.
fn session_packet(suite: Suite, s: &Session, msg: &[u8]) -> Vec<u8> {
    // Confidentiality trailer: pad bytes 1, 2, ... and the pad length, to 16 bytes.
    let pad = (16 - (msg.len() + 1) % 16) % 16;
    let mut plain = msg.to_vec();
    plain.extend((1..=pad).map(|i| i as u8));
    plain.push(pad as u8);
    let mut iv = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut iv);
    let enc = cbc::Encryptor::<aes::Aes128>::new(&s.aes_key.into(), &iv.into());
    let len = plain.len();
    let cipher = enc
        .encrypt_padded_mut::<NoPadding>(&mut plain, len)
        .map(<[u8]>::to_vec)
        .unwrap_or_default();
    let mut payload = iv.to_vec();
    payload.extend_from_slice(&cipher);

    let mut p = rmcp_header();
    let auth_start = p.len();
    p.push(0x06);
    p.push(0xC0 | PAYLOAD_IPMI);
    p.extend_from_slice(&s.bmc_id.to_le_bytes());
    p.extend_from_slice(&s.seq.to_le_bytes());
    p.extend_from_slice(&u16::try_from(payload.len()).unwrap_or(0).to_le_bytes());
    p.extend_from_slice(&payload);
    // Integrity pad: AuthType..NextHeader a multiple of 4 bytes.
    let covered = p.len() - auth_start + 2;
    let ipad = (4 - covered % 4) % 4;
    p.extend(std::iter::repeat_n(0xFF, ipad));
    p.push(ipad as u8);
    p.push(0x07);
    let code = suite.hmac(&s.k1, &[&p[auth_start..]]);
    p.extend_from_slice(&code[..suite.integrity_len().min(code.len())]);
    p
}

/// Verifies, decrypts and matches a reply inside the session: its sequence number
/// and the data after the IPMI header.
fn parse_session_reply(
    suite: Suite,
    s: &Session,
    buf: &[u8],
    netfn: u8,
    cmd: u8,
    rq_seq: u8,
) -> Result<(u32, Vec<u8>), String> {
    let (ptype, sid, seq, payload, end) = rmcpp_split(buf)?;
    if ptype != 0xC0 | PAYLOAD_IPMI {
        return Err(format!(
            "payload type {ptype:#04x}: expected an authenticated, encrypted IPMI message"
        ));
    }
    if sid != s.console_id {
        return Err(format!("reply for session {sid:#010x}, not ours"));
    }
    // Trailer: pad (0..3 x 0xFF), pad length, next header 0x07, AuthCode.
    let icv_len = suite.integrity_len();
    if buf.len() < end + 2 + icv_len {
        return Err("session trailer is truncated".to_owned());
    }
    let code_at = buf.len() - icv_len;
    let (covered, code) = buf[4..].split_at(code_at - 4);
    let expect = suite.hmac(&s.k1, &[covered]);
    if expect.len() < icv_len || !bool::from(expect[..icv_len].ct_eq(code)) {
        return Err("integrity check (AuthCode) does not match".to_owned());
    }
    if buf[code_at - 1] != 0x07 {
        return Err("trailer's next header is not 0x07".to_owned());
    }
    let ipad = usize::from(buf[code_at - 2]);
    if ipad > 3 || end + ipad + 2 != code_at {
        return Err("integrity pad length is inconsistent".to_owned());
    }
    if payload.len() < 32 || payload.len() % 16 != 0 {
        return Err(format!(
            "encrypted payload of {} bytes is not IV + whole AES blocks",
            payload.len()
        ));
    }
    let (iv, cipher) = payload.split_at(16);
    let mut plain = cipher.to_vec();
    let mut iv_arr = [0u8; 16];
    iv_arr.copy_from_slice(iv);
    let dec = cbc::Decryptor::<aes::Aes128>::new(&s.aes_key.into(), &iv_arr.into());
    let Ok(plain) = dec.decrypt_padded_mut::<NoPadding>(&mut plain) else {
        return Err("AES-CBC decryption failed".to_owned());
    };
    let Some(&pad) = plain.last() else {
        return Err("empty plaintext".to_owned());
    };
    let pad = usize::from(pad);
    if pad >= plain.len() {
        return Err("confidentiality pad longer than the payload".to_owned());
    }
    let msg = &plain[..plain.len() - 1 - pad];
    match match_response(msg, netfn, cmd, rq_seq) {
        Exchange::Done(data) => Ok((seq, data)),
        Exchange::Skip(why) => Err(why),
    }
}

/// Splits the completion code off a reply; a failure code becomes an error.
fn completion(address: &str, what: &str, data: &[u8]) -> Result<Vec<u8>, BmcError> {
    match data.split_first() {
        None => Err(BmcError::Protocol {
            address: address.to_owned(),
            detail: format!("{what} reply carries no completion code"),
        }),
        Some((0x00, rest)) => Ok(rest.to_vec()),
        Some((0xC0, _)) => Err(BmcError::Busy {
            address: address.to_owned(),
            detail: format!("{what}: completion code 0xc0 (node busy)"),
        }),
        Some((&cc, _)) => Err(BmcError::Command {
            address: address.to_owned(),
            command: what.to_owned(),
            completion_code: cc,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        Session {
            console_id: 0x1122_3345,
            bmc_id: 0x0000_0002,
            seq: 7,
            inbound_high: 0,
            k1: vec![9; 20],
            aes_key: [5; 16],
        }
    }

    /// Builds what a BMC would send back: the same framing, addressed to the console.
    fn bmc_reply(suite: Suite, s: &Session, msg: &[u8]) -> Vec<u8> {
        let mirrored = Session {
            bmc_id: s.console_id,
            ..s.clone()
        };
        session_packet(suite, &mirrored, msg)
    }

    fn response(netfn: u8, cmd: u8, rq_seq: u8, data: &[u8]) -> Vec<u8> {
        let mut m = vec![SOFTWARE_ID, (netfn | 1) << 2];
        m.push(checksum(&m));
        let start = m.len();
        m.extend_from_slice(&[BMC_ADDR, rq_seq << 2, cmd]);
        m.extend_from_slice(data);
        m.push(checksum(&m[start..]));
        m
    }

    #[test]
    fn session_packets_round_trip_and_tampering_is_refused() {
        for suite in [Suite::Sha1, Suite::Sha256] {
            let s = session();
            let msg = response(NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS, 3, &[0, 0x01, 0, 0]);
            let pkt = bmc_reply(suite, &s, &msg);
            match parse_session_reply(suite, &s, &pkt, NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS, 3) {
                Ok((seq, d)) => {
                    assert_eq!(d, vec![0, 0x01, 0, 0]);
                    assert_eq!(seq, s.seq);
                }
                Err(why) => panic!("{why}"),
            }
            // Wrong sequence number of request: skipped.
            assert!(
                parse_session_reply(suite, &s, &pkt, NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS, 4)
                    .is_err()
            );
            // Any flipped bit fails the integrity check (or the framing).
            for i in 0..pkt.len() {
                let mut bad = pkt.clone();
                bad[i] ^= 0x40;
                assert!(
                    parse_session_reply(suite, &s, &bad, NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS, 3)
                        .is_err(),
                    "flipping byte {i} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn hostile_datagrams_never_panic() {
        let s = session();
        let mut rng = rand::thread_rng();
        let good = bmc_reply(
            Suite::Sha1,
            &s,
            &response(NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS, 3, &[0, 1, 0, 0]),
        );
        for n in 0..3000usize {
            let mut buf = if n % 2 == 0 {
                let mut b = vec![0u8; n % 200];
                rng.fill_bytes(&mut b);
                if b.len() > 6 {
                    b[..4].copy_from_slice(&[0x06, 0x00, 0xFF, 0x07]);
                    b[4] = if n % 4 == 0 { 0x06 } else { 0x00 };
                }
                b
            } else {
                good[..n % (good.len() + 1)].to_vec()
            };
            if n % 3 == 0 && buf.len() > 15 {
                // Claim a huge payload length.
                buf[14] = 0xff;
                buf[15] = 0xff;
            }
            let _ = parse_session_reply(Suite::Sha1, &s, &buf, 0, 1, 3);
            let _ = parse_v15_reply(&buf, CMD_GET_CHANNEL_AUTH_CAP, 1);
            let _ = presession_payload(&buf, PAYLOAD_RAKP2, 0);
            let _ = parse_ipmi_response(&buf);
        }
    }

    #[test]
    fn requests_carry_valid_checksums() {
        let m = ipmi_request(NETFN_CHASSIS, CMD_CHASSIS_CONTROL, 5, &[1]);
        assert_eq!(m[0], BMC_ADDR);
        assert_eq!(checksum(&m[..3]), 0);
        assert_eq!(checksum(&m[3..]), 0);
    }

    #[test]
    fn completion_codes_map_to_errors() {
        assert_eq!(completion("h", "x", &[0, 1, 2]), Ok(vec![1, 2]));
        assert!(matches!(
            completion("h", "x", &[0xC0]),
            Err(BmcError::Busy { .. })
        ));
        assert!(matches!(
            completion("h", "x", &[0xD4]),
            Err(BmcError::Command {
                completion_code: 0xD4,
                ..
            })
        ));
        assert!(matches!(
            completion("h", "x", &[]),
            Err(BmcError::Protocol { .. })
        ));
    }
}
