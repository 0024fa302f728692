//! The pure provisioning logic against the shipped examples: the profiles and the rule
//! in `deploy/profiles/` parse, validate and render exactly the golden files in
//! `tests/golden/` for a fixture machine (a QEMU VM like the lab's).
//!
//! After an intended change of a template or of the renderer, review the new output
//! and bless it: `SUBSTRUCT_BLESS=1 cargo test -p substruct-controller --test
//! provisioning_logic`, then read the diff of `tests/golden/`.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use substruct_controller::images::{ImageKind, ImageRecord};
use substruct_controller::lifecycle::{transition, Event, State};
use substruct_controller::profile::{
    callback_url, install_url, sample_machine, Method, Profile, ProfileError,
};
use substruct_controller::record::MachineRecord;
use substruct_controller::rules::{dry_run, first_match, Rule};
use substruct_wire::intent::BootIntent;
use substruct_wire::report::{
    BootMode, Cpu, Disk, DiskTransport, Dmi, HardwareReport, Memory, Nic,
};
use substruct_wire::{BootToken, Mac, MachineId, SiteId};

const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The registered images the examples name, with the kinds they need.
fn images(name: &str) -> Option<ImageRecord> {
    let kind = match name {
        "debian-12/linux" | "rocky-9/vmlinuz" | "ubuntu-24.04/vmlinuz" => ImageKind::Kernel,
        "debian-12/initrd.gz" | "rocky-9/initrd.img" | "ubuntu-24.04/initrd" => ImageKind::Initrd,
        "marker.img" | "debian-12/cloud.img" => ImageKind::Disk,
        _ => return None,
    };
    Some(ImageRecord {
        name: name.parse().unwrap(),
        kind,
        sha256: SHA.parse().unwrap(),
        size: 4 * 1024 * 1024,
        added_unix_ms: 1_700_000_000_000,
    })
}

fn token() -> BootToken {
    BootToken::new("7d3f0c9a5e2b4c1d8f6a0b3e9c2d5f71").unwrap()
}

/// A QEMU VM as the lab boots them: q35, 4 vCPUs, 2 GiB, one virtio disk and NIC.
fn qemu_vm() -> MachineRecord {
    let facts = HardwareReport {
        prospector_version: "0.1.0".into(),
        boot_mode: BootMode::Bios,
        dmi: Dmi {
            sys_vendor: Some("QEMU".into()),
            product_name: Some("Standard PC (Q35 + ICH9, 2009)".into()),
            product_version: Some("pc-q35-8.2".into()),
            product_serial: Some("SUBSTRUCT-VM-01".into()),
            product_uuid: Some("8d2e4f1a-6b3c-4d5e-9f70-1a2b3c4d5e6f".into()),
            bios_vendor: Some("SeaBIOS".into()),
            bios_version: Some("1.16.3-debian-1.16.3-2".into()),
            ..Dmi::default()
        },
        cpu: Cpu {
            model: Some("QEMU Virtual CPU version 2.5+".into()),
            sockets: 1,
            cores: 4,
            threads: 4,
            ..Cpu::default()
        },
        memory: Memory {
            total_bytes: 2 * 1024 * 1024 * 1024,
            dimms: Vec::new(),
        },
        disks: vec![Disk {
            name: "vda".into(),
            size_bytes: 20 * 1024 * 1024 * 1024,
            serial: Some("disk-01".into()),
            transport: DiskTransport::Virtio,
            ..Disk::default()
        }],
        nics: vec![Nic {
            name: "ens3".into(),
            mac: Mac::parse("52:54:00:12:34:56").unwrap(),
            driver: Some("virtio_net".into()),
            pci_address: Some("0000:00:03.0".into()),
            speed_mbps: None,
            carrier: Some(true),
        }],
        pci: Vec::new(),
        bmc: None,
        secure_boot: Some(false),
    };
    MachineRecord::new(
        MachineId::new("8d2e4f1a-6b3c-4d5e-9f70-1a2b3c4d5e6f").unwrap(),
        SiteId::new("lab").unwrap(),
        facts,
        Vec::new(),
        1_700_000_000_000,
    )
}

fn example(name: &str) -> Profile {
    Profile::from_toml(&read(&format!("deploy/profiles/{name}.toml")))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Everything a profile produces for one machine, as one text.
fn rendered(profile: &Profile, machine: &MachineRecord) -> String {
    let token = token();
    let mut out = format!("### profile {} ({})\n", profile.name, profile.method);
    match profile.boot_intent(&token) {
        BootIntent::Install {
            kernel,
            initrd,
            cmdline,
        } => out.push_str(&format!(
            "### boot: install\nkernel: {kernel}\ninitrd: {initrd}\ncmdline: {cmdline}\n"
        )),
        other => out.push_str(&format!("### boot: {other:?}\n")),
    }
    if let Some(image) = profile.image.as_deref().and_then(images) {
        let deploy = profile.deploy_instruction(&image, &token);
        out.push_str(&format!("### deploy: {deploy:?}\n"));
    }
    for file in profile.render_files(machine, &token).unwrap() {
        out.push_str(&format!(
            "### file {} ({})\n{}",
            file.name, file.content_type, file.body
        ));
    }
    out
}

fn check_golden(name: &str, actual: &str) {
    let path = repo().join(format!("controller/tests/golden/{name}.txt"));
    if std::env::var_os("SUBSTRUCT_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (bless with SUBSTRUCT_BLESS=1 after reviewing)",
            path.display()
        )
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name}: rendered output differs from {} from line {}:\n--- expected\n{}\n--- actual\n{}",
            path.display(),
            line + 1,
            expected.lines().skip(line).take(5).collect::<Vec<_>>().join("\n"),
            actual.lines().skip(line).take(5).collect::<Vec<_>>().join("\n"),
        );
    }
}

#[test]
fn golden_examples() {
    for name in [
        "debian12-preseed",
        "rocky9-kickstart",
        "ubuntu24-autoinstall",
        "marker-image",
        "debian12-cloud",
    ] {
        let profile = example(name);
        assert_eq!(profile.name, name);
        profile
            .validate(&images)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        check_golden(name, &rendered(&profile, &qemu_vm()));
    }
}

#[test]
fn examples_call_back_and_use_the_machine() {
    let token = token();
    for name in [
        "debian12-preseed",
        "rocky9-kickstart",
        "ubuntu24-autoinstall",
    ] {
        let profile = example(name);
        let files = profile.render_files(&qemu_vm(), &token).unwrap();
        let all: String = files.iter().map(|f| f.body.as_str()).collect();
        assert!(all.contains(&callback_url(&token)), "{name}");
        assert!(all.contains("vda"), "{name}: the target disk");
        assert!(all.contains("substruct-vm-01"), "{name}: the host name");
        assert!(!all.contains("7XK2J93"), "{name}: not the sample machine");
        // The sample machine's first disk is NVMe; its USB SD card is never chosen.
        let sample = profile
            .render_files(&sample_machine(), &token)
            .unwrap()
            .iter()
            .map(|f| f.body.clone())
            .collect::<String>();
        assert!(sample.contains("nvme0n1"), "{name}");
        assert!(!sample.contains("sdb"), "{name}");
    }
    let files = example("ubuntu24-autoinstall")
        .render_files(&qemu_vm(), &token)
        .unwrap();
    let names: Vec<_> = files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["user-data", "meta-data"]);
    assert_eq!(
        files[1].body,
        "instance-id: 8d2e4f1a-6b3c-4d5e-9f70-1a2b3c4d5e6f\nlocal-hostname: ubuntu-substruct-vm-01\n"
    );
    assert!(example("marker-image")
        .render_files(&qemu_vm(), &token)
        .unwrap()
        .is_empty());
    // The cloud image's seed: the machine's host name and the profile's key, no token
    // (the seed stays on the disk; the token is the install's secret).
    let files = example("debian12-cloud")
        .render_files(&qemu_vm(), &token)
        .unwrap();
    let names: Vec<_> = files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["user-data", "meta-data"]);
    assert!(files[0].body.starts_with("#cloud-config\n"));
    assert!(files[0].body.contains("\nhostname: deb-"));
    assert!(files[0].body.contains("ops@example"));
    assert!(files[1].body.contains("\nlocal-hostname: deb-"));
    assert!(!files.iter().any(|f| f.body.contains(token.as_str())));
}

#[test]
fn boot_intents_per_method() {
    let token = token();
    let ks = example("rocky9-kickstart").boot_intent(&token);
    let BootIntent::Install {
        kernel,
        initrd,
        cmdline,
    } = ks
    else {
        panic!("{ks:?}")
    };
    assert_eq!(
        (kernel.as_str(), initrd.as_str()),
        ("rocky-9/vmlinuz", "rocky-9/initrd.img")
    );
    assert!(cmdline.starts_with(&format!(
        "inst.ks={{edge}}/install/{token}/ks.cfg inst.text console=ttyS0 "
    )));
    assert!(cmdline.ends_with("inst.repo=https://dl.rockylinux.org/pub/rocky/9/BaseOS/x86_64/os/"));

    let mut preseed = example("debian12-preseed");
    preseed.cmdline = None;
    assert_eq!(
        preseed.boot_intent(&token),
        BootIntent::Install {
            kernel: "debian-12/linux".parse().unwrap(),
            initrd: "debian-12/initrd.gz".parse().unwrap(),
            cmdline: format!(
                "auto=true priority=critical interface=auto preseed/url={{edge}}/install/{token}/preseed.cfg console=ttyS0"
            ),
        }
    );
    let BootIntent::Install { cmdline, .. } = example("ubuntu24-autoinstall").boot_intent(&token)
    else {
        panic!()
    };
    assert!(cmdline.starts_with(&format!(
        "autoinstall ds=nocloud-net;s={{edge}}/install/{token}/ console=ttyS0 ip=dhcp"
    )));
    assert_eq!(
        example("marker-image").boot_intent(&token),
        BootIntent::Discover
    );
    assert_eq!(
        install_url(&token, "ks.cfg"),
        format!("{{edge}}/install/{token}/ks.cfg")
    );
    assert_eq!(
        callback_url(&token),
        format!("{{edge}}/api/v1/machines/{token}/done")
    );
}

#[test]
fn deploy_instruction_only_for_its_image() {
    let token = token();
    let marker = example("marker-image");
    let image = images("marker.img").unwrap();
    let d = marker.deploy_instruction(&image, &token).unwrap();
    assert_eq!(d.path, "marker.img");
    assert_eq!(d.sha256, SHA);
    assert_eq!(d.size, 4 * 1024 * 1024);
    assert_eq!(d.disk.as_deref(), Some("vda"));
    assert_eq!(d.token, token);
    let other = ImageRecord {
        name: "other.img".parse().unwrap(),
        ..image.clone()
    };
    assert_eq!(marker.deploy_instruction(&other, &token), None);
    assert_eq!(
        example("rocky9-kickstart").deploy_instruction(&image, &token),
        None
    );
}

fn minimal(template: &str) -> Profile {
    Profile::from_toml(&format!(
        "name = \"t\"\nmethod = \"kickstart\"\nkernel = \"rocky-9/vmlinuz\"\ninitrd = \"rocky-9/initrd.img\"\ntemplate = '''\n{template}'''\n"
    ))
    .unwrap()
}

#[test]
fn template_errors_name_the_line() {
    let p = minimal("text\n# line 2\n{{ callback_url }}\nnetwork --hostname={{ machin.serial }}\n");
    assert_eq!(
        p.validate(&images).unwrap_err().to_string(),
        "template line 4: undefined value `machin.serial`"
    );
    let p = minimal("a\nb\nc\n{{ machine.serail }}\n{{ callback_url }}\n");
    assert_eq!(
        p.validate(&images).unwrap_err().to_string(),
        "template line 4: undefined value `machine.serail`"
    );
    let p = minimal("{{ callback_url }}\n{% for x in machine.disks %}\n");
    let err = p.validate(&images).unwrap_err().to_string();
    assert!(err.starts_with("template line "), "{err}");
    assert!(err.contains("syntax error"), "{err}");
    let p = minimal("{{ callback_url }}{{ machine.id | frobnicate }}\n");
    let err = p.validate(&images).unwrap_err().to_string();
    assert!(err.starts_with("template line 1: unknown filter"), "{err}");
    // A params value the profile does not set is undefined too.
    let p = minimal("{{ callback_url }}\nrootpw --iscrypted {{ params.root_password_hash }}\n");
    assert_eq!(
        p.validate(&images).unwrap_err().to_string(),
        "template line 2: undefined value `params.root_password_hash`"
    );
    // A runaway loop runs out of fuel instead of hanging the controller.
    let p = minimal(
        "{{ callback_url }}{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n",
    );
    let err = p.validate(&images).unwrap_err().to_string();
    assert!(err.contains("fuel"), "{err}");
}

#[test]
fn a_template_must_call_back() {
    let p = minimal("text\nreboot\n");
    assert_eq!(p.validate(&images).unwrap_err(), ProfileError::NoCallback);
    assert_eq!(
        ProfileError::NoCallback.to_string(),
        "the template never calls back: add {{ callback_url }} to its last step"
    );
    minimal("text\ncurl -X POST {{ callback_url }}\n")
        .validate(&images)
        .unwrap();
}

#[test]
fn field_checks() {
    let ok = minimal("{{ callback_url }}\n");
    ok.validate(&images).unwrap();
    type Change = Box<dyn Fn(&mut Profile)>;
    let cases: Vec<(Change, &str)> = vec![
        (
            Box::new(|p| p.name = "Bad_Name".into()),
            "profile field `name`",
        ),
        (
            Box::new(|p| p.name = "a".repeat(64)),
            "profile field `name`",
        ),
        (
            Box::new(|p| p.kernel = None),
            "profile field `kernel`: is required for method kickstart",
        ),
        (
            Box::new(|p| p.template = None),
            "profile field `template`: is required",
        ),
        (
            Box::new(|p| p.image = Some("marker.img".into())),
            "profile field `image`: is not used by method kickstart",
        ),
        (
            Box::new(|p| p.target_disk = Some("vda".into())),
            "profile field `target_disk`",
        ),
        (
            Box::new(|p| p.kernel = Some("nope/vmlinuz".into())),
            "profile field `kernel`: image \"nope/vmlinuz\" is not registered",
        ),
        (
            Box::new(|p| p.kernel = Some("rocky-9/initrd.img".into())),
            "image \"rocky-9/initrd.img\" is of kind initrd, not kernel",
        ),
        (
            Box::new(|p| p.initrd = Some("../etc/shadow".into())),
            "profile field `initrd`: image \"../etc/shadow\" is not valid",
        ),
        (
            Box::new(|p| p.cmdline = Some("a\nimgfetch evil".into())),
            "profile field `cmdline`: contains the control character",
        ),
        (
            Box::new(|p| {
                p.template = Some(format!("{{{{ callback_url }}}}{}", " ".repeat(256 * 1024)))
            }),
            "profile field `template`: is 262162 bytes; the limit is 262144",
        ),
        (
            Box::new(|p| p.params.root_password_hash = Some("hunter2".into())),
            "profile field `params.root_password_hash`",
        ),
        (
            Box::new(|p| p.params.ssh_keys = vec!["ssh-ed25519 AAAA\nx".into()]),
            "profile field `params.ssh_keys`",
        ),
        (
            Box::new(|p| p.params.packages = vec!["vim; rm -rf /".into()]),
            "profile field `params.packages`",
        ),
        (
            Box::new(|p| p.params.hostname_pattern = Some("{{ machine.nosuch }}".into())),
            "params.hostname_pattern line 1: undefined value `machine.nosuch`",
        ),
        (
            Box::new(|p| {
                p.params.vars.insert("1x".into(), "v".into());
            }),
            "profile field `params.vars`",
        ),
    ];
    for (change, want) in cases {
        let mut p = ok.clone();
        change(&mut p);
        let err = p.validate(&images).unwrap_err().to_string();
        assert!(
            err.starts_with(want) || err.contains(want),
            "{err:?} does not say {want:?}"
        );
    }
    // Method image: a disk image, no installer; a template is optional: the
    // deployed system's cloud-init user-data, rendered with a meta-data beside it.
    let mut image = example("marker-image");
    image.validate(&images).unwrap();
    let token = BootToken::new("0123456789abcdef0123456789abcdef").unwrap();
    assert!(image
        .render_files(&sample_machine(), &token)
        .unwrap()
        .is_empty());
    image.template = Some("#cloud-config\nhostname: {{ hostname }}\n".into());
    image.validate(&images).unwrap();
    let files = image.render_files(&sample_machine(), &token).unwrap();
    let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["user-data", "meta-data"]);
    assert!(files[0].body.starts_with("#cloud-config\nhostname: "));
    assert!(files[1].body.starts_with("instance-id: "));
    assert!(files[1].body.contains("\nlocal-hostname: "));
    image.template = Some("{{ nosuch }}".into());
    let err = image.validate(&images).unwrap_err().to_string();
    assert!(err.contains("undefined value"), "{err}");
    let mut image = example("marker-image");
    image.image = Some("debian-12/linux".into());
    let err = image.validate(&images).unwrap_err().to_string();
    assert_eq!(
        err,
        "profile field `image`: image \"debian-12/linux\" is of kind kernel, not disk"
    );
    image.image = None;
    assert!(image
        .validate(&images)
        .unwrap_err()
        .to_string()
        .contains("`image`: is required"));
}

#[test]
fn toml_errors_name_the_field_and_line() {
    let err =
        Profile::from_toml("name = \"x\"\nmethod = \"kickstart\"\nkernal = \"k\"\n").unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("profile TOML line 3: unknown field `kernal`"),
        "{text}"
    );
    let err = Profile::from_toml("name = \"x\"\nmethod = \"netinst\"\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("profile TOML line 2: unknown variant `netinst`"),
        "{err}"
    );
    let err = Profile::from_toml("name = \"x\"\n").unwrap_err();
    assert!(err.to_string().contains("missing field `method`"), "{err}");
    let err = Profile::from_toml("name = \"x\"\nmethod = \"image\"\n[params]\nroot_pw = \"x\"\n")
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("profile TOML line 4: unknown field `root_pw`"),
        "{err}"
    );
}

#[test]
fn machine_facts_cannot_inject_lines() {
    let mut vm = qemu_vm();
    vm.facts.dmi.sys_vendor = Some("QEMU\n%post\nrm -rf /\n%end".into());
    vm.facts.dmi.product_serial = Some("evil\nserial".into());
    let p = minimal("vendor={{ machine.vendor }}\nhost={{ hostname }}\n{{ callback_url }}\n");
    let body = &p.render_files(&vm, &token()).unwrap()[0].body;
    assert!(
        body.starts_with(
            "vendor=QEMU?%post?rm -rf /?%end\nhost=8d2e4f1a-6b3c-4d5e-9f70-1a2b3c4d5e6f\n"
        ),
        "{body}"
    );
    let mut p = p;
    p.params.hostname_pattern = Some("{{ machine.serial }}.Example.COM".into());
    assert_eq!(p.hostname_for(&vm).unwrap(), "evil-serial-example-com");
}

#[test]
fn hostnames_are_valid() {
    let mut p = minimal("{{ callback_url }}\n");
    let vm = qemu_vm();
    assert_eq!(
        p.hostname_for(&vm).unwrap(),
        "8d2e4f1a-6b3c-4d5e-9f70-1a2b3c4d5e6f"
    );
    p.params.hostname_pattern = Some("node-{{ machine.serial | lower }}".into());
    assert_eq!(p.hostname_for(&vm).unwrap(), "node-substruct-vm-01");
    p.params.hostname_pattern = Some("--{{ machine.product }}--".into());
    assert_eq!(p.hostname_for(&vm).unwrap(), "standard-pc-q35-ich9-2009");
    p.params.hostname_pattern = Some("x".repeat(100));
    assert_eq!(p.hostname_for(&vm).unwrap(), "x".repeat(63));
    // Repetition is bounded by the render's byte budget.
    p.params.hostname_pattern = Some("{{ 'x' * 100 }}".into());
    assert_eq!(p.hostname_for(&vm).unwrap(), "x".repeat(63));
    p.params.hostname_pattern = Some("{{ 'x' * 99999999999 }}".into());
    let err = p.hostname_for(&vm).unwrap_err().to_string();
    assert!(err.contains("budget"), "{err}");
    p.params.hostname_pattern = Some("{% if false %}x{% endif %}".into());
    assert_eq!(p.hostname_for(&vm).unwrap(), vm.id.as_str());
    let mut no_serial = qemu_vm();
    no_serial.facts.dmi.product_serial = Some("To be filled by O.E.M.".into());
    p.params.hostname_pattern = Some("node-{{ machine.serial }}".into());
    assert_eq!(p.hostname_for(&no_serial).unwrap(), "node");
}

#[test]
fn sample_machine_is_realistic() {
    let m = sample_machine();
    assert_eq!(m.facts.usable_uuid(), Some(m.id.as_str()));
    assert!(m.facts.disks.len() >= 2 && m.facts.nics.len() >= 2);
    assert_eq!(m.state, State::Discovered);
}

// ---- rules ----

fn rule(text: &str) -> Rule {
    let r = Rule::from_toml(text).unwrap();
    r.validate().unwrap();
    r
}

#[test]
fn shipped_rule_takes_qemu_vms() {
    let r = rule(&read("deploy/profiles/rules/qemu-marker.toml"));
    assert_eq!(r.profile, "marker-image");
    assert!(r.matches(&qemu_vm()));
    assert!(!r.matches(&sample_machine()));
    assert_eq!(
        r.explain(&sample_machine()),
        ["vendor: \"Dell Inc.\" does not match \"QEMU\""]
    );
}

#[test]
fn each_criterion() {
    let vm = qemu_vm();
    let dell = sample_machine();
    // (criterion, matches the VM?, matches the Dell?)
    let cases = [
        ("vendor = \"qemu\"", true, false),
        ("vendor = \"Dell*\"", false, true),
        ("product = \"PowerEdge R6?0\"", false, true),
        ("product = \"*q35*\"", true, false),
        ("serial = \"7xk2j93\"", false, true),
        ("serial = \"*CNCMS*\"", false, true),
        ("serial = \"SUBSTRUCT-VM-*\"", true, false),
        ("cpu_model = \"*xeon*gold*\"", false, true),
        ("min_memory = \"2GiB\"", true, true),
        ("min_memory = \"2147483649\"", false, true),
        ("min_memory = \"128GB\"", false, true),
        ("min_cpus = 4", true, true),
        ("min_cpus = 5", false, true),
        ("min_disks = 1", true, true),
        ("min_disks = 3", false, true),
        ("min_disks = 4", false, false),
        ("min_disk_size = \"20GiB\"", true, true),
        ("min_disk_size = \"1TB\"", false, true),
        ("disk_transport = \"nvme\"", false, true),
        ("disk_transport = \"virtio\"", true, false),
        ("disk_transport = \"usb\"", false, false),
        ("min_disks = 2\ndisk_transport = \"nvme\"", false, true),
        ("min_disks = 3\ndisk_transport = \"nvme\"", false, false),
        ("min_disks = 2\nmin_disk_size = \"1TB\"", false, false),
        ("nic_driver = \"virtio*\"", true, false),
        ("nic_driver = \"ICE\"", false, true),
        ("min_nic_speed_mbps = 10000", false, true),
        (
            "nic_driver = \"ice\"\nmin_nic_speed_mbps = 25000",
            false,
            true,
        ),
        (
            "nic_driver = \"ice\"\nmin_nic_speed_mbps = 40000",
            false,
            false,
        ),
        ("mac_prefix = \"52:54:00\"", true, false),
        ("mac_prefix = \"B4-96-91-C2-10-A1\"", false, true),
        ("mac_prefix = \"b49691c210a2\"", false, false),
        ("vendor = \"QEMU\"\nmin_memory = \"4GiB\"", false, false),
    ];
    for (criterion, on_vm, on_dell) in cases {
        let r = rule(&format!(
            "name = \"r\"\nprofile = \"p\"\n[match]\n{criterion}\n"
        ));
        assert_eq!(
            r.matches(&vm),
            on_vm,
            "{criterion} on the VM: {:?}",
            r.explain(&vm)
        );
        assert_eq!(
            r.matches(&dell),
            on_dell,
            "{criterion} on the Dell: {:?}",
            r.explain(&dell)
        );
        assert_eq!(r.explain(&vm).is_empty(), on_vm);
    }
    // A fact the machine did not report never matches, even `*`.
    let mut bare = qemu_vm();
    bare.facts.cpu.model = None;
    let r = rule("name = \"r\"\nprofile = \"p\"\n[match]\ncpu_model = \"*\"\n");
    assert_eq!(r.explain(&bare), ["cpu_model: not reported, wanted \"*\""]);
    // One line per failing criterion.
    let r = rule("name = \"r\"\nprofile = \"p\"\n[match]\nvendor = \"Dell*\"\nmin_cpus = 64\nmin_memory = \"1GiB\"\nmin_nic_speed_mbps = 1000\n");
    let why = r.explain(&vm);
    assert_eq!(why.len(), 3, "{why:?}");
    assert_eq!(why[1], "min_cpus: 4 is fewer than 64");
    assert!(why[2].starts_with("nics: none with speed >= 1000 Mbit/s among [ens3 (52:54:00:12:34:56, virtio_net, speed unknown)]"), "{}", why[2]);
}

#[test]
fn validation() {
    let bad = [
        (
            "name = \"r\"\nprofile = \"p\"\n",
            "rule field `match`: is empty",
        ),
        (
            "name = \"r\"\nprofile = \"p\"\nmatch_all = true\n[match]\nvendor = \"x\"\n",
            "rule field `match_all`",
        ),
        (
            "name = \"R\"\nprofile = \"p\"\nmatch_all = true\n",
            "rule field `name`",
        ),
        (
            "name = \"r\"\nprofile = \"P p\"\nmatch_all = true\n",
            "rule field `profile`",
        ),
        (
            "name = \"r\"\nprofile = \"p\"\n[match]\nmin_memory = \"8 GB of RAM\"\n",
            "rule field `match.min_memory`",
        ),
        (
            "name = \"r\"\nprofile = \"p\"\n[match]\nmin_disk_size = \"1.2.3T\"\n",
            "rule field `match.min_disk_size`",
        ),
        (
            "name = \"r\"\nprofile = \"p\"\n[match]\ndisk_transport = \"floppy\"\n",
            "rule field `match.disk_transport`",
        ),
        (
            "name = \"r\"\nprofile = \"p\"\n[match]\nmac_prefix = \"52:54:zz\"\n",
            "rule field `match.mac_prefix`",
        ),
        (
            "name = \"r\"\nprofile = \"p\"\n[match]\nvendor = \"\"\n",
            "rule field `match.vendor`",
        ),
    ];
    for (text, want) in bad {
        let err = Rule::from_toml(text)
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(want),
            "{err:?} does not start with {want:?}"
        );
    }
    let err =
        Rule::from_toml("name = \"r\"\nprofile = \"p\"\n[match]\nvendr = \"x\"\n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("rule TOML line 4: unknown field `vendr`"),
        "{err}"
    );
    // An empty match takes every machine only when it says so.
    let all = rule("name = \"all\"\nprofile = \"p\"\nmatch_all = true\n");
    assert!(all.matches(&qemu_vm()) && all.matches(&sample_machine()));
    let mut unsafe_rule = all.clone();
    unsafe_rule.match_all = false;
    assert!(!unsafe_rule.matches(&qemu_vm()));
    assert!(all.enabled, "enabled by default");
}

#[test]
fn priority_order_and_dry_run() {
    let mk = |name: &str, priority: i32, vendor: Option<&str>| {
        let matcher = match vendor {
            Some(v) => format!("[match]\nvendor = \"{v}\"\n"),
            None => "match_all = true\n".to_owned(),
        };
        rule(&format!(
            "name = \"{name}\"\npriority = {priority}\nprofile = \"{name}-profile\"\n{matcher}"
        ))
    };
    let vm = qemu_vm();
    let dell = sample_machine();
    let rules = vec![
        mk("catch-all", 1000, None),
        mk("qemu", 10, Some("QEMU")),
        mk("b-tie", 10, Some("*")),
        mk("a-tie", 10, Some("Dell*")),
    ];
    assert_eq!(first_match(&rules, &vm).unwrap().name, "b-tie");
    assert_eq!(first_match(&rules, &dell).unwrap().name, "a-tie");
    let mut disabled = rules.clone();
    disabled[2].enabled = false;
    assert_eq!(first_match(&disabled, &vm).unwrap().name, "qemu");
    disabled[1].enabled = false;
    assert_eq!(first_match(&disabled, &vm).unwrap().name, "catch-all");
    assert!(first_match(&rules[1..2], &dell).is_none());
    assert!(first_match(&[], &vm).is_none());

    // Dry run: only discovered machines, and only where the new rule is the first match.
    let mut assigned = qemu_vm();
    assigned.id = MachineId::new("assigned-vm").unwrap();
    assigned.state = transition(
        &State::Discovered,
        &Event::Assign {
            profile: "x".into(),
        },
    )
    .unwrap();
    let machines = vec![vm.clone(), dell.clone(), assigned];
    let ids = |v: Vec<MachineId>| v.into_iter().map(|m| m.to_string()).collect::<Vec<_>>();
    let qemu_first = mk("qemu-first", 1, Some("QEMU"));
    assert_eq!(
        ids(dry_run(&rules, &qemu_first, &machines)),
        [vm.id.to_string()]
    );
    let late_all = mk("late-all", 5000, None);
    assert!(dry_run(&rules, &late_all, &machines).is_empty());
    let early_all = mk("early-all", -1, None);
    assert_eq!(
        ids(dry_run(&rules, &early_all, &machines)),
        [vm.id.to_string(), dell.id.to_string()]
    );
    // Replacing a rule of the same name: "catch-all" moved first takes both machines.
    let moved = mk("catch-all", 0, None);
    assert_eq!(dry_run(&rules, &moved, &machines).len(), 2);
    let mut off = moved.clone();
    off.enabled = false;
    assert!(dry_run(&rules, &off, &machines).is_empty());
}

#[test]
fn lifecycle_is_exposed_for_the_record() {
    let s = transition(
        &State::Discovered,
        &Event::Assign {
            profile: "marker-image".into(),
        },
    )
    .unwrap();
    assert_eq!(s.profile(), Some("marker-image"));
    assert!(s.token_valid());
    assert_eq!(Method::Image.to_string(), "image");
}

/// The preseed's late_command carries a multi-line script through one shell line:
/// run that line with a real shell and compare what it writes with the script.
#[test]
fn preseed_post_install_survives_quoting() {
    let script =
        "if true; then\n  echo 'it'\"'\"'s' \"a\\\\b\" 100% $HOME\nfi\n# ends with a backslash \\";
    let mut profile = example("debian12-preseed");
    profile.params.post_install = Some(script.to_owned());
    profile.validate(&images).unwrap();
    let body = profile
        .render_files(&qemu_vm(), &token())
        .unwrap()
        .remove(0)
        .body;
    let line = body
        .lines()
        .find(|l| l.trim_start().starts_with("printf '%b'"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("post.sh");
    let command = line
        .trim()
        .trim_end_matches('\\')
        .trim_end()
        .trim_end_matches(';')
        .replace(
            "/target/root/substruct-post-install.sh",
            out.to_str().unwrap(),
        );
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .status()
        .unwrap();
    assert!(status.success(), "{command}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), script);
}
