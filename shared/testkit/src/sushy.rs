//! A real Redfish BMC for tests: sushy-tools' `sushy-emulator` with its fake driver
//! (`SUSHY_EMULATOR_FAKE_DRIVER`, no libvirt), on HTTPS with a self-signed P-256
//! certificate of its own and one bcrypt basic-auth user (`admin` / `secret`).
//!
//! Every fake system starts powered off; as on real hardware, the fake driver applies
//! a power change 1 to 11 s after the request. A test reads what the BMC did through
//! the emulator itself ([`Sushy::system`], plain `curl`), and compares the certificate
//! pin a client learned with the one `openssl` computes ([`Sushy::cert_pin`]).
//!
//! [`Sushy::start`] goes through the [`gate`](crate::gate): without `sushy-emulator`,
//! `openssl`, `curl` or python's `bcrypt` it skips, or fails under
//! `SUBSTRUCT_REQUIRE_SYSTEM_TESTS=1`.

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::gate::{gate, system_test, Need};
use crate::{free_port, ChildGuard};

/// The user every emulator accepts (HTTP basic auth, or a Redfish session).
pub const USER: &str = "admin";

/// That user's password.
pub const PASSWORD: &str = "secret";

/// How long the emulator may take to answer its service root.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `sushy-emulator --fake` on HTTPS with one bcrypt user, killed on drop.
#[derive(Debug)]
pub struct Sushy {
    _child: ChildGuard,
    dir: tempfile::TempDir,
    port: u16,
}

impl Sushy {
    /// Starts it on a free port with the fake systems `systems` (UUIDs; system `i` is
    /// named `node-{i}` and starts off), or `None` when the gate says skip.
    pub fn start(systems: &[&str]) -> Result<Option<Self>> {
        Self::start_on(systems, free_port())
    }

    /// Starts it on `port` (e.g. the port of an emulator just dropped, to stand in
    /// for it), with a certificate of its own, or `None` when the gate says skip.
    pub fn start_on(systems: &[&str], port: u16) -> Result<Option<Self>> {
        if !system_test(&[
            Need::Tool("sushy-emulator"),
            Need::Tool("openssl"),
            Need::Tool("curl"),
        ]) {
            return Ok(None);
        }
        let dir = tempfile::Builder::new().prefix("sushy-").tempdir()?;
        let d = dir.path();
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=bmc.test"])
            .arg("-keyout")
            .arg(d.join("key.pem"))
            .arg("-out")
            .arg(d.join("cert.pem")))?;
        let hash = run(Command::new("python3").args([
            "-c",
            &format!(
                "import bcrypt; print(bcrypt.hashpw(b'{PASSWORD}', bcrypt.gensalt(4)).decode())"
            ),
        ]));
        let hash = match hash {
            Ok(h) => h,
            Err(e) => {
                gate(Some(format!(
                    "python3 bcrypt (a sushy-tools dependency) is missing: {e}"
                )));
                return Ok(None);
            }
        };
        std::fs::write(d.join("htpasswd"), format!("{USER}:{}\n", hash.trim()))?;
        std::fs::create_dir(d.join("state"))?;
        let systems_py: Vec<String> = systems
            .iter()
            .enumerate()
            .map(|(i, uuid)| {
                format!(
                    "{{'uuid': '{uuid}', 'name': 'node-{i}', 'power_state': 'Off', 'external_notifier': False, 'nics': [{{'mac': '52:54:00:00:00:0{i}', 'ip': '10.0.0.{i}'}}]}}"
                )
            })
            .collect();
        let conf = format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\n\
             SUSHY_EMULATOR_SSL_CERT = '{cert}'\nSUSHY_EMULATOR_SSL_KEY = '{key}'\n\
             SUSHY_EMULATOR_AUTH_FILE = '{auth}'\nSUSHY_EMULATOR_STATE_DIR = '{state}'\n\
             SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_FAKE_SYSTEMS = [{systems}]\n",
            cert = d.join("cert.pem").display(),
            key = d.join("key.pem").display(),
            auth = d.join("htpasswd").display(),
            state = d.join("state").display(),
            systems = systems_py.join(", "),
        );
        std::fs::write(d.join("sushy.conf"), conf)?;
        let log = std::fs::File::create(d.join("sushy.log"))?;
        let child = Command::new("sushy-emulator")
            .arg("--config")
            .arg(d.join("sushy.conf"))
            .env("SUSHY_EMULATOR_CONFIG", d.join("sushy.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting sushy-emulator")?;
        let sushy = Self {
            _child: ChildGuard(child),
            dir,
            port,
        };
        crate::wait_for_blocking("sushy-emulator to answer", START_TIMEOUT, || {
            sushy.curl(&["/redfish/v1/"]).is_ok()
        })
        .with_context(|| sushy.log())?;
        Ok(Some(sushy))
    }

    /// `127.0.0.1:PORT`, as a BMC address (HTTPS).
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Its TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What the emulator logged so far (its stdout and stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sushy.log")).unwrap_or_default()
    }

    /// `curl -k -u admin:secret` on `args[0]`, a path such as `/redfish/v1/` (the
    /// rest are extra curl arguments, e.g. `-X POST -d ...`); the answer as JSON. An
    /// HTTP error status is an error.
    pub fn curl(&self, args: &[&str]) -> Result<Value> {
        let (path, extra) = args.split_first().context("no path")?;
        let out = run(Command::new("curl")
            .args([
                "-sfk",
                "--max-time",
                "5",
                "-u",
                &format!("{USER}:{PASSWORD}"),
            ])
            .args(extra)
            .arg(format!("https://127.0.0.1:{}{path}", self.port)))?;
        Ok(serde_json::from_str(&out)?)
    }

    /// What the emulator itself says of a system (`/redfish/v1/Systems/{uuid}`:
    /// `PowerState`, `Boot`, ...).
    pub fn system(&self, uuid: &str) -> Result<Value> {
        self.curl(&[&format!("/redfish/v1/Systems/{uuid}")])
    }

    /// The sha256 of its certificate (DER) as 64 lowercase hex digits, computed by
    /// `openssl x509 -fingerprint` (not by the code under test): the form a Redfish
    /// pin takes in `BmcSettings` and `PowerResult`, and that `CertPin` parses.
    pub fn cert_pin(&self) -> Result<String> {
        let out = run(Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(self.dir.path().join("cert.pem")))?;
        // `sha256 Fingerprint=AB:CD:...` (the label's case varies between versions).
        let digits = out
            .trim()
            .rsplit_once('=')
            .map_or(out.trim(), |(_, hex)| hex)
            .replace(':', "")
            .to_ascii_lowercase();
        if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("openssl printed no sha256 fingerprint: {out:?}");
        }
        Ok(digits)
    }
}

/// Runs `cmd` to completion; its stdout, or an error quoting its stderr.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
