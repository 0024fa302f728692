//! A real IPMI BMC for tests: OpenIPMI's `ipmi_sim` (Debian package `openipmi`)
//! listening for IPMI 2.0 LAN (RMCP+) on a UDP port, optionally inside a network
//! namespace.
//!
//! The simulator's chassis is wired to a small shell script (`chassis_control`, see
//! OpenIPMI's `lanserv/ipmi_sim_chassiscontrol`) that keeps the power and boot flags
//! in files of the harness's directory, so a test reads what the BMC did
//! ([`IpmiSim::power_is_on`], [`IpmiSim::boot_device`]). With
//! [`IpmiSimOptions::power_on_cmd`], power on starts that command in the background
//! (its own process group) and power off stops it: the power state is then "the
//! command runs", which is how a QEMU machine gets a BMC. With
//! [`IpmiSimOptions::vm_port`], the simulator also listens for QEMU's
//! `-chardev socket,...,port=N -device ipmi-bmc-extern,chardev=...` (the in-band
//! KCS/BT side).

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::netns::{Netns, NsProcess};

/// What the simulated BMC looks like.
#[derive(Debug, Clone)]
pub struct IpmiSimOptions {
    /// The address to listen on (inside the namespace when there is one).
    pub addr: String,
    /// The UDP port; 0 picks a free one (on the host's loopback, so pass a port when
    /// the simulator runs in a namespace).
    pub port: u16,
    /// The administrator user (IPMI user id 2).
    pub user: String,
    /// Its password (at most 20 bytes).
    pub password: String,
    /// A shell script (`sh`) started at power on, in a process group of its own, and
    /// stopped (SIGTERM to the group, then SIGKILL) at power off; power is on while
    /// it runs. `$IPMI_SIM_BOOT` holds the one-time boot device set through IPMI
    /// (`pxe`, `default`, `none`, ...; e.g. `-boot once=n` for `pxe`), which power on
    /// consumes (the flags then read `none`), as a BIOS does.
    pub power_on_cmd: Option<String>,
    /// A TCP port on `addr` for QEMU's `ipmi-bmc-extern` chardev (codec VM).
    pub vm_port: Option<u16>,
    /// Power on when the simulator starts.
    pub start_on: bool,
    /// The LAN channel's MAC address as the BMC reports it (LAN configuration
    /// parameter 5, in-band or over the LAN); its IP address is `addr`.
    pub lan_mac: String,
}

impl IpmiSimOptions {
    /// Loopback, a free port, user `admin`, the given password, power off, no hooks.
    pub fn loopback(password: &str) -> Self {
        Self {
            addr: "127.0.0.1".to_owned(),
            port: 0,
            user: "admin".to_owned(),
            password: password.to_owned(),
            power_on_cmd: None,
            vm_port: None,
            start_on: false,
            lan_mac: "02:00:00:00:06:23".to_owned(),
        }
    }
}

/// A running `ipmi_sim`, stopped on drop (with the command it powered on).
#[derive(Debug)]
pub struct IpmiSim {
    dir: tempfile::TempDir,
    proc: Option<NsProcess>,
    /// Where it listens (UDP).
    pub addr: String,
    /// Its UDP port.
    pub port: u16,
}

/// The LAN configuration program `ipmi_sim` runs as `PROG DEVICE get PARM...`: the
/// channel's address settings, from the environment the simulator is started with.
const LAN_SCRIPT: &str = r#"#!/bin/sh
shift
op=$1
shift
[ "$op" = get ] || { echo "read-only simulated LAN settings"; exit 1; }
for p in "$@"; do
  case $p in
    ip_addr) echo "ip_addr:$SUBSTRUCT_BMC_IP" ;;
    ip_addr_src) echo "ip_addr_src:static" ;;
    mac_addr) echo "mac_addr:$SUBSTRUCT_BMC_MAC" ;;
    subnet_mask) echo "subnet_mask:255.255.255.0" ;;
    default_gw_ip_addr | backup_gw_ip_addr) echo "$p:0.0.0.0" ;;
    default_gw_mac_addr | backup_gw_mac_addr) echo "$p:00:00:00:00:00:00" ;;
    *) echo "Invalid parameter: $p"; exit 1 ;;
  esac
done
"#;

/// The chassis control program `ipmi_sim` runs as `PROG DEVICE get|set PARM [VAL]...`.
const CHASSIS_SCRIPT: &str = r#"#!/bin/sh
# Chassis control for ipmi_sim (written by substruct_testkit::ipmi_sim).
dir=$(dirname "$0")
shift # the device
op=$1; shift
vm_running() {
  [ -s "$dir/vm.pid" ] && kill -0 "$(cat "$dir/vm.pid")" 2>/dev/null
}
power_get() {
  if [ -s "$dir/power_on_cmd" ]; then
    if vm_running; then echo 1; else echo 0; fi
  else
    cat "$dir/power" 2>/dev/null || echo 0
  fi
}
power_set() {
  echo "$(date +%s.%N) power $1" >> "$dir/events"
  if [ -s "$dir/power_on_cmd" ]; then
    if [ "$1" = 1 ]; then
      vm_running && return 0
      # The boot flags are valid for the next boot only: hand them over, then clear.
      boot=$(cat "$dir/boot" 2>/dev/null || echo default)
      echo none > "$dir/boot"
      echo "$(date +%s.%N) boot-used $boot" >> "$dir/events"
      IPMI_SIM_BOOT=$boot setsid sh "$dir/power_on_cmd" >> "$dir/vm.log" 2>&1 < /dev/null &
      echo $! > "$dir/vm.pid"
    else
      if vm_running; then
        pid=$(cat "$dir/vm.pid")
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null
      fi
      : > "$dir/vm.pid"
    fi
  fi
  echo "$1" > "$dir/power"
}
case $op in
get)
  for p in "$@"; do
    case $p in
      power) echo "power:$(power_get)" ;;
      boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)" ;;
      *) echo "Invalid parameter: $p"; exit 1 ;;
    esac
  done ;;
set)
  while [ $# -gt 1 ]; do
    p=$1; v=$2; shift 2
    case $p in
      power) power_set "$v" ;;
      boot) echo "$v" > "$dir/boot"; echo "$(date +%s.%N) boot $v" >> "$dir/events" ;;
      reset) echo "$(date +%s.%N) reset $v" >> "$dir/events" ;;
      shutdown)
        # A well-behaved OS: a soft shutdown request ends in power off.
        echo "$(date +%s.%N) shutdown $v" >> "$dir/events"
        [ "$v" = 1 ] && power_set 0 ;;
      *) echo "Invalid parameter: $p"; exit 1 ;;
    esac
  done ;;
*) echo "No operation given"; exit 1 ;;
esac
"#;

/// A Get Channel Authentication Capabilities request (IPMI 1.5, no session),
/// used to see that the simulator answers.
const PING: [u8; 23] = [
    0x06, 0x00, 0xFF, 0x07, // RMCP
    0x00, 0, 0, 0, 0, 0, 0, 0, 0,    // auth none, seq 0, session 0
    0x09, // message length
    0x20, 0x18, 0xC8, 0x81, 0x04, 0x38, 0x8E, 0x04, 0xB1,
];

fn quote(s: &str) -> Result<String> {
    if s.contains('"') || s.contains('\n') || s.contains('\\') {
        bail!("{s:?}: quotes, backslashes and newlines cannot go in lan.conf");
    }
    Ok(format!("\"{s}\""))
}

impl IpmiSim {
    /// Starts `ipmi_sim` (inside `netns` when given) and waits until it answers on
    /// its UDP port.
    pub fn start(netns: Option<&Netns>, opts: &IpmiSimOptions) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("ipmi-sim-").tempdir()?;
        let port = if opts.port == 0 {
            UdpSocket::bind((opts.addr.as_str(), 0))
                .and_then(|s| s.local_addr())
                .map(|a| a.port())
                .context("picking a free UDP port")?
        } else {
            opts.port
        };
        let script = dir.path().join("chassis");
        std::fs::write(&script, CHASSIS_SCRIPT)?;
        let lan_script = dir.path().join("lan");
        std::fs::write(&lan_script, LAN_SCRIPT)?;
        Command::new("chmod")
            .args(["755"])
            .arg(&script)
            .arg(&lan_script)
            .status()
            .context("chmod")?;
        if opts.lan_mac.parse::<substruct_wire::Mac>().is_err() {
            bail!("lan_mac {:?} is not a MAC address", opts.lan_mac);
        }
        if let Some(cmd) = &opts.power_on_cmd {
            std::fs::write(dir.path().join("power_on_cmd"), format!("{cmd}\n"))?;
        }
        std::fs::write(dir.path().join("power"), "0\n")?;
        std::fs::create_dir(dir.path().join("state"))?;
        let mut conf = format!(
            "name \"substruct\"\nset_working_mc 0x20\n  startlan 1\n    addr {} {port}\n    priv_limit admin\n    allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n    allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n    guid a123456789abcdefa123456789abcdef\n    lan_config_program {}\n  endlan\n  chassis_control {}\n",
            opts.addr,
            quote(&format!("{} lan1", lan_script.display()))?,
            quote(&format!("{} 0x20", script.display()))?,
        );
        if let Some(vm) = opts.vm_port {
            conf.push_str(&format!("  serial 15 {} {vm} codec VM\n", opts.addr));
        }
        conf.push_str(&format!(
            "  user 2 true {} {} admin 10 none md2 md5 straight\n",
            quote(&opts.user)?,
            quote(&opts.password)?
        ));
        let conf_path = dir.path().join("lan.conf");
        std::fs::write(&conf_path, conf)?;
        let emu = dir.path().join("bmc.emu");
        std::fs::write(
            &emu,
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n",
        )?;
        let args = [
            "-c".to_owned(),
            conf_path.display().to_string(),
            "-f".to_owned(),
            emu.display().to_string(),
            "-s".to_owned(),
            dir.path().join("state").display().to_string(),
            "-n".to_owned(),
        ];
        let log = dir.path().join("ipmi_sim.log");
        // What the LAN configuration program reports.
        let lan_env = [
            ("SUBSTRUCT_BMC_IP", opts.addr.clone()),
            ("SUBSTRUCT_BMC_MAC", opts.lan_mac.clone()),
        ];
        let proc = match netns {
            Some(ns) => {
                let mut cmd = ns.command("ipmi_sim");
                cmd.args(&args).envs(lan_env.clone());
                NsProcess::spawn_command("ipmi_sim", cmd, log)?
            }
            None => {
                let mut cmd = Command::new("ipmi_sim");
                cmd.args(&args).envs(lan_env);
                NsProcess::spawn_command("ipmi_sim", cmd, log)?
            }
        };
        let mut sim = Self {
            dir,
            proc: Some(proc),
            addr: opts.addr.clone(),
            port,
        };
        let target = format!("{}:{port}", opts.addr);
        let probe = move || -> Result<bool> {
            let sock = UdpSocket::bind(if target.starts_with('[') {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            })?;
            sock.set_read_timeout(Some(Duration::from_millis(200)))?;
            sock.send_to(&PING, &target)?;
            let mut buf = [0u8; 512];
            Ok(sock.recv_from(&mut buf).is_ok())
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(p) = sim.proc.as_mut() {
                p.check_alive()?;
            }
            let up = match netns {
                Some(ns) => ns.run_inside(probe.clone()).unwrap_or(false),
                None => probe().unwrap_or(false),
            };
            if up {
                break;
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "ipmi_sim did not answer on {}:{port} within 10s; log:\n{}",
                    opts.addr,
                    sim.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if opts.start_on {
            sim.chassis(&["set", "power", "1"])?;
        }
        Ok(sim)
    }

    fn chassis(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(self.dir.path().join("chassis"))
            .arg("0x20")
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `host:port` for a BMC client.
    pub fn address(&self) -> String {
        if self.addr.contains(':') {
            format!("[{}]:{}", self.addr, self.port)
        } else {
            format!("{}:{}", self.addr, self.port)
        }
    }

    /// The power as the simulated chassis has it (the hook command runs, or the
    /// power file says 1).
    pub fn power_is_on(&self) -> bool {
        self.chassis(&["get", "power"])
            .is_ok_and(|s| s.trim() == "power:1")
    }

    /// The boot device last set through Set System Boot Options parameter 5, as
    /// `ipmi_sim` names it (`none`, `pxe`, `default`, `cdrom`, `bios`).
    pub fn boot_device(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("boot"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "default".to_owned())
    }

    /// What the chassis was asked to do, one line each (`power 1`, `shutdown 1`, ...,
    /// after a timestamp).
    pub fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("events"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The directory with the configuration, state and logs (`vm.log` holds the
    /// output of the power-on command).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The simulator's own log.
    pub fn log_text(&self) -> String {
        self.proc
            .as_ref()
            .map(NsProcess::log_text)
            .unwrap_or_default()
    }

    /// Stops the simulator (the BMC "goes away"); the power-on command keeps
    /// running, as a machine does when its BMC reboots.
    pub fn stop(&mut self) {
        // Dropping the process stops it (SIGTERM, then SIGKILL).
        drop(self.proc.take());
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        self.stop();
        if std::fs::read_to_string(self.dir.path().join("vm.pid"))
            .is_ok_and(|s| !s.trim().is_empty())
        {
            let _ = self.chassis(&["set", "power", "0"]);
        }
    }
}
