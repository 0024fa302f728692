//! The machine's BMC, read in-band over the IPMI system interface: the kernel's
//! `ipmi_si` driver (KCS, SMIC or BT, found through ACPI or SMBIOS) and `ipmi_devintf`,
//! which gives `/dev/ipmi0`. Only "Get" commands are sent: Get Device ID, Get Channel
//! Info for channels 1–11, and Get LAN Configuration Parameters (address, its source,
//! MAC, netmask, gateway) for each LAN channel. Nothing is written to the BMC.
//!
//! What the answers mean is decided by pure functions over a [`Transport`]; the one
//! transport that touches the device is [`DevIpmi`] (two ioctls and a poll).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use substruct_wire::report::{Bmc, BmcLan};
use substruct_wire::Mac;

const NETFN_APP: u8 = 0x06;
const NETFN_TRANSPORT: u8 = 0x0C;
const CMD_GET_DEVICE_ID: u8 = 0x01;
const CMD_GET_CHANNEL_INFO: u8 = 0x42;
const CMD_GET_LAN_CONFIG: u8 = 0x02;
/// Channel medium type "802.3 LAN" (IPMI 2.0 table 6-3).
const MEDIUM_LAN: u8 = 0x04;
/// LAN configuration parameters (IPMI 2.0 table 23-4).
const LAN_IP: u8 = 3;
const LAN_IP_SOURCE: u8 = 4;
const LAN_MAC: u8 = 5;
const LAN_NETMASK: u8 = 6;
const LAN_GATEWAY: u8 = 12;
/// How long one command may take (a KCS interface under a busy BMC is slow).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(3);

/// Sends one IPMI request to the BMC and returns the response bytes (completion code
/// first), or `None` when it could not be sent or no answer came.
pub trait Transport {
    fn request(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Option<Vec<u8>>;
}

/// The BMC behind `root/dev/ipmi0` (or `dev/ipmi/0`, `dev/ipmidev/0`), if any answers.
pub fn gather(root: &Path) -> Option<Bmc> {
    let device = ["dev/ipmi0", "dev/ipmi/0", "dev/ipmidev/0"]
        .iter()
        .map(|p| root.join(p))
        .find(|p| p.exists())?;
    let mut transport = match DevIpmi::open(&device) {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(device = %device.display(), error = %e, "IPMI device does not open");
            return None;
        }
    };
    read(&mut transport)
}

/// What the BMC behind `t` says about itself and its LAN channels; `None` when it does
/// not answer Get Device ID.
pub fn read<T: Transport>(t: &mut T) -> Option<Bmc> {
    let id = t.request(NETFN_APP, CMD_GET_DEVICE_ID, &[])?;
    let mut bmc = parse_device_id(&id)?;
    for channel in 1..=11u8 {
        let Some(info) = t.request(NETFN_APP, CMD_GET_CHANNEL_INFO, &[channel]) else {
            continue;
        };
        if channel_medium(&info) != Some(MEDIUM_LAN) {
            continue;
        }
        let mut param = |p| {
            t.request(NETFN_TRANSPORT, CMD_GET_LAN_CONFIG, &[channel, p, 0, 0])
                .and_then(|r| lan_param_data(&r).map(<[u8]>::to_vec))
        };
        bmc.lan.push(BmcLan {
            channel,
            ip: param(LAN_IP).and_then(|d| ipv4(&d)),
            ip_source: param(LAN_IP_SOURCE).and_then(|d| ip_source(&d)),
            mac: param(LAN_MAC).and_then(|d| mac(&d)),
            netmask: param(LAN_NETMASK).and_then(|d| ipv4(&d)),
            gateway: param(LAN_GATEWAY).and_then(|d| ipv4(&d)),
        });
    }
    Some(bmc)
}

/// Get Device ID's answer: IPMI version, manufacturer, firmware revision.
fn parse_device_id(r: &[u8]) -> Option<Bmc> {
    // cc, device id, revision, fw major, fw minor (BCD), IPMI version (BCD, minor in
    // the high nibble), additional support, manufacturer id (20 bits, LS byte first).
    if r.len() < 10 || r[0] != 0 {
        return None;
    }
    let version = r[5];
    let manufacturer = u32::from_le_bytes([r[7], r[8], r[9] & 0x0F, 0]);
    Some(Bmc {
        ipmi_version: Some(format!("{}.{}", version & 0x0F, version >> 4)),
        manufacturer_id: Some(manufacturer).filter(|&m| m != 0 && m != 0x0F_FFFF),
        firmware: Some(format!("{}.{:02x}", r[3] & 0x7F, r[4])),
        lan: Vec::new(),
    })
}

/// Get Channel Info's answer: the channel's medium type.
fn channel_medium(r: &[u8]) -> Option<u8> {
    (r.len() >= 3 && r[0] == 0).then(|| r[2] & 0x7F)
}

/// Get LAN Configuration Parameters' answer: the parameter's data (after the completion
/// code and the parameter revision).
fn lan_param_data(r: &[u8]) -> Option<&[u8]> {
    (r.len() >= 2 && r[0] == 0).then(|| &r[2..])
}

fn ipv4(d: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = d.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b)).filter(|a| !a.is_unspecified())
}

fn mac(d: &[u8]) -> Option<Mac> {
    let b: [u8; 6] = d.get(..6)?.try_into().ok()?;
    Some(Mac(b)).filter(|m| m.0 != [0; 6] && m.0 != [0xFF; 6])
}

fn ip_source(d: &[u8]) -> Option<String> {
    let word = match d.first()? & 0x0F {
        0 => "unspecified",
        1 => "static",
        2 => "dhcp",
        3 => "bios",
        _ => "other",
    };
    Some(word.to_owned())
}

/// `/dev/ipmi0`: requests to the BMC's system interface through the kernel's IPMI
/// message handler.
#[derive(Debug)]
pub struct DevIpmi {
    file: std::fs::File,
    next_id: i64,
}

impl DevIpmi {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        Ok(Self { file, next_id: 1 })
    }
}

impl Transport for DevIpmi {
    fn request(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Option<Vec<u8>> {
        let id = self.next_id;
        self.next_id += 1;
        match dev::exchange(&self.file, id, netfn, cmd, data, COMMAND_TIMEOUT) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(netfn, cmd, error = %e, "IPMI request failed");
                None
            }
        }
    }
}

/// The IPMI device ioctls (linux/ipmi.h).
#[allow(unsafe_code)]
mod dev {
    use std::fs::File;
    use std::os::fd::{AsFd, AsRawFd};
    use std::time::{Duration, Instant};

    use nix::libc::{c_int, c_long, c_short, c_uchar, c_uint};
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    /// `struct ipmi_msg`.
    #[repr(C)]
    pub struct IpmiMsg {
        netfn: u8,
        cmd: u8,
        data_len: u16,
        data: *mut u8,
    }

    /// `struct ipmi_req`.
    #[repr(C)]
    pub struct IpmiReq {
        addr: *mut u8,
        addr_len: c_uint,
        msgid: c_long,
        msg: IpmiMsg,
    }

    /// `struct ipmi_recv`.
    #[repr(C)]
    pub struct IpmiRecv {
        recv_type: c_int,
        addr: *mut u8,
        addr_len: c_uint,
        msgid: c_long,
        msg: IpmiMsg,
    }

    /// `struct ipmi_system_interface_addr`.
    #[repr(C)]
    struct SystemInterfaceAddr {
        addr_type: c_int,
        channel: c_short,
        lun: c_uchar,
    }

    const IPMI_SYSTEM_INTERFACE_ADDR_TYPE: c_int = 0x0C;
    const IPMI_BMC_CHANNEL: c_short = 0x0F;
    const IPMI_RESPONSE_RECV_TYPE: c_int = 1;
    /// IPMI_MAX_MSG_LENGTH.
    const MAX_MSG: usize = 272;

    // IPMICTL_SEND_COMMAND = _IOR('i', 13, struct ipmi_req);
    // IPMICTL_RECEIVE_MSG_TRUNC = _IOWR('i', 11, struct ipmi_recv).
    nix::ioctl_read!(send_command, b'i', 13, IpmiReq);
    nix::ioctl_readwrite!(receive_trunc, b'i', 11, IpmiRecv);

    /// Sends one request to the BMC and waits up to `timeout` for its response (other
    /// messages on the descriptor are skipped).
    pub fn exchange(
        file: &File,
        id: i64,
        netfn: u8,
        cmd: u8,
        data: &[u8],
        timeout: Duration,
    ) -> nix::Result<Option<Vec<u8>>> {
        let mut addr = SystemInterfaceAddr {
            addr_type: IPMI_SYSTEM_INTERFACE_ADDR_TYPE,
            channel: IPMI_BMC_CHANNEL,
            lun: 0,
        };
        let mut body = data.to_vec();
        let mut req = IpmiReq {
            addr: (&raw mut addr).cast(),
            addr_len: std::mem::size_of::<SystemInterfaceAddr>() as c_uint,
            msgid: id as c_long,
            msg: IpmiMsg {
                netfn,
                cmd,
                data_len: u16::try_from(body.len()).unwrap_or(u16::MAX),
                data: body.as_mut_ptr(),
            },
        };
        // SAFETY: `req` points at `addr` and `body`, which live until the call returns;
        // the kernel copies both in during the call and keeps no pointer.
        unsafe { send_command(file.as_raw_fd(), &mut req) }?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(file.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(ms))? == 0 {
                return Ok(None);
            }
            let mut raddr = SystemInterfaceAddr {
                addr_type: 0,
                channel: 0,
                lun: 0,
            };
            let mut buf = vec![0u8; MAX_MSG];
            let mut recv = IpmiRecv {
                recv_type: 0,
                addr: (&raw mut raddr).cast(),
                addr_len: std::mem::size_of::<SystemInterfaceAddr>() as c_uint,
                msgid: 0,
                msg: IpmiMsg {
                    netfn: 0,
                    cmd: 0,
                    data_len: MAX_MSG as u16,
                    data: buf.as_mut_ptr(),
                },
            };
            // SAFETY: `recv` points at `raddr` and `buf` with their true sizes; the
            // kernel writes at most those many bytes (the TRUNC variant truncates).
            match unsafe { receive_trunc(file.as_raw_fd(), &mut recv) } {
                Ok(_) => {}
                Err(nix::errno::Errno::EMSGSIZE) => {}
                Err(nix::errno::Errno::EAGAIN) => continue,
                Err(e) => return Err(e),
            }
            if recv.recv_type != IPMI_RESPONSE_RECV_TYPE || recv.msgid != id as c_long {
                continue;
            }
            buf.truncate(usize::from(recv.msg.data_len).min(MAX_MSG));
            return Ok(Some(buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A BMC that answers from a table: (netfn, cmd, data) → response.
    #[derive(Default)]
    struct Table(HashMap<(u8, u8, Vec<u8>), Vec<u8>>);

    impl Transport for Table {
        fn request(&mut self, netfn: u8, cmd: u8, data: &[u8]) -> Option<Vec<u8>> {
            self.0.get(&(netfn, cmd, data.to_vec())).cloned()
        }
    }

    fn device_id() -> Vec<u8> {
        // cc 0, id 0x20, rev 1, fw 2.05, IPMI 2.0, support, Dell (674 = 0x0002A2), product.
        vec![
            0, 0x20, 0x01, 0x02, 0x05, 0x02, 0xBF, 0xA2, 0x02, 0x00, 0x01, 0x00,
        ]
    }

    #[test]
    fn a_bmc_with_one_lan_channel_is_read() {
        let mut t = Table::default();
        t.0.insert((NETFN_APP, CMD_GET_DEVICE_ID, vec![]), device_id());
        // channel 1: LAN; channel 2: IPMB (medium 1); the rest: invalid channel.
        t.0.insert(
            (NETFN_APP, CMD_GET_CHANNEL_INFO, vec![1]),
            vec![0, 1, 0x04, 0x01, 0x82, 0xF2, 0x1B, 0, 0, 0],
        );
        t.0.insert(
            (NETFN_APP, CMD_GET_CHANNEL_INFO, vec![2]),
            vec![0, 2, 0x01, 0x01, 0x00, 0xF2, 0x1B, 0, 0, 0],
        );
        for c in 3..=11 {
            t.0.insert((NETFN_APP, CMD_GET_CHANNEL_INFO, vec![c]), vec![0xCC]);
        }
        let lan = |p: u8, d: &[u8]| {
            let mut r = vec![0, 0x11];
            r.extend_from_slice(d);
            ((NETFN_TRANSPORT, CMD_GET_LAN_CONFIG, vec![1, p, 0, 0]), r)
        };
        t.0.extend([
            lan(LAN_IP, &[10, 77, 0, 250]),
            lan(LAN_IP_SOURCE, &[0x01]),
            lan(LAN_MAC, &[0x52, 0x54, 0, 0x77, 0x40, 0x99]),
            lan(LAN_NETMASK, &[255, 255, 255, 0]),
            lan(LAN_GATEWAY, &[0, 0, 0, 0]),
        ]);
        let bmc = read(&mut t).unwrap();
        assert_eq!(bmc.ipmi_version.as_deref(), Some("2.0"));
        assert_eq!(bmc.manufacturer_id, Some(674));
        assert_eq!(bmc.firmware.as_deref(), Some("2.05"));
        assert_eq!(
            bmc.lan,
            [BmcLan {
                channel: 1,
                ip: Some(Ipv4Addr::new(10, 77, 0, 250)),
                ip_source: Some("static".into()),
                mac: Some(Mac([0x52, 0x54, 0, 0x77, 0x40, 0x99])),
                netmask: Some(Ipv4Addr::new(255, 255, 255, 0)),
                gateway: None,
            }]
        );
    }

    #[test]
    fn no_answer_or_an_error_is_no_bmc_and_short_answers_are_missing_facts() {
        assert_eq!(read(&mut Table::default()), None);
        let mut t = Table::default();
        t.0.insert((NETFN_APP, CMD_GET_DEVICE_ID, vec![]), vec![0xC1]);
        assert_eq!(read(&mut t), None, "completion code: invalid command");
        t.0.insert((NETFN_APP, CMD_GET_DEVICE_ID, vec![]), vec![0, 1, 2]);
        assert_eq!(read(&mut t), None, "too short");
        // A LAN channel whose parameters fail or come back short: no values, no panic.
        t.0.insert((NETFN_APP, CMD_GET_DEVICE_ID, vec![]), device_id());
        t.0.insert((NETFN_APP, CMD_GET_CHANNEL_INFO, vec![1]), vec![0, 1, 0x84]);
        t.0.insert(
            (NETFN_TRANSPORT, CMD_GET_LAN_CONFIG, vec![1, LAN_IP, 0, 0]),
            vec![0, 0x11, 10, 77],
        );
        t.0.insert(
            (NETFN_TRANSPORT, CMD_GET_LAN_CONFIG, vec![1, LAN_MAC, 0, 0]),
            vec![0x80],
        );
        let bmc = read(&mut t).unwrap();
        assert_eq!(
            bmc.lan,
            [BmcLan {
                channel: 1,
                ..BmcLan::default()
            }]
        );
    }

    #[test]
    fn every_response_shape_is_read_without_panicking() {
        for len in 0..16 {
            let r: Vec<u8> = (0..len).map(|i| (i * 37) as u8 & 0x7F).collect();
            let mut zero = r.clone();
            if let Some(b) = zero.first_mut() {
                *b = 0;
            }
            let _ = parse_device_id(&zero);
            let _ = channel_medium(&zero);
            if let Some(d) = lan_param_data(&zero) {
                let _ = (ipv4(d), mac(d), ip_source(d));
            }
        }
    }

    #[test]
    fn a_root_without_an_ipmi_device_has_no_bmc() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(gather(dir.path()), None);
    }
}
