//! The seed partition as Linux's own tools see it: images partitioned by `sfdisk`
//! (GPT and MBR), grown as a deploy onto a bigger disk leaves them, then given the
//! `CIDATA` partition by the prospector's code; `sfdisk --verify` finds no problem,
//! `sfdisk --json` lists the new partition, `blkid` reads the label, `fsck.vfat`
//! passes and `mtype` prints the files back.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use substruct_prospector::seed;

const MIB: u64 = 1 << 20;

fn tool(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| {
        format!("running {cmd:?} (packages fdisk, util-linux, dosfstools, mtools)")
    })?;
    ensure!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(name: &str) -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(name).exists())
}

/// An image of `image_mib` partitioned by sfdisk with `script`, grown to `disk_mib`.
fn image(
    dir: &Path,
    label: &str,
    script: &str,
    image_mib: u64,
    disk_mib: u64,
) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("{label}.img"));
    let f = std::fs::File::create(&path)?;
    f.set_len(image_mib * MIB)?;
    drop(f);
    let mut child = Command::new("sfdisk")
        .args(["--quiet", "--no-reread", "--no-tell-kernel"])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(format!("label: {label}\n{script}").as_bytes())?;
    ensure!(
        child.wait()?.success(),
        "sfdisk failed to partition the image"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)?
        .set_len(disk_mib * MIB)?;
    Ok(path)
}

fn check(path: &Path, files: &[(&'static str, Vec<u8>)], want_table: &str) -> Result<()> {
    let seeded = seed::write(path, files)?;
    assert_eq!(seeded.placed.table, want_table);
    assert_eq!(seeded.placed.len_bytes, seed::PARTITION_BYTES);
    let verify = tool(Command::new("sfdisk").arg("--verify").arg(path))?;
    ensure!(
        !verify.to_lowercase().contains("problem"),
        "sfdisk --verify: {verify}"
    );
    let json: Value = serde_json::from_str(&tool(Command::new("sfdisk").arg("--json").arg(path))?)?;
    let parts = json["partitiontable"]["partitions"]
        .as_array()
        .context("no partitions")?;
    let last = parts.last().context("no partition")?;
    assert_eq!(parts.len() as u32, seeded.placed.number);
    assert_eq!(
        last["start"].as_u64(),
        Some(seeded.placed.start_bytes / 512)
    );
    assert_eq!(last["size"].as_u64(), Some(seed::PARTITION_BYTES / 512));
    if want_table == "gpt" {
        assert_eq!(last["name"], "CIDATA");
        // The backup header is at the disk's very end now.
        let size = std::fs::metadata(path)?.len();
        assert_eq!(
            json["partitiontable"]["lastlba"].as_u64(),
            Some(size / 512 - 34),
            "{json}"
        );
    }
    let offset = seeded.placed.start_bytes.to_string();
    let probe = tool(
        Command::new("blkid")
            .args(["--probe", "--offset", &offset, "--output", "export"])
            .arg(path),
    )?;
    ensure!(
        probe.contains("LABEL=CIDATA") && probe.contains("TYPE=vfat"),
        "{probe}"
    );
    // The partition on its own, as the deployed kernel sees it.
    let part = path.with_extension("part");
    let all = std::fs::read(path)?;
    let start = seeded.placed.start_bytes as usize;
    std::fs::write(&part, &all[start..start + seed::PARTITION_BYTES as usize])?;
    tool(Command::new("fsck.vfat").arg("-n").arg(&part))?;
    for (name, body) in files {
        let got = tool(
            Command::new("mtype")
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(&part)
                .arg(format!("::{name}")),
        )?;
        assert_eq!(got.as_bytes(), &body[..], "{name}");
    }
    Ok(())
}

#[test]
fn seed_partition_is_what_sfdisk_blkid_and_fsck_expect() -> Result<()> {
    if !["sfdisk", "blkid", "fsck.vfat", "mtype"]
        .iter()
        .all(|t| have(t))
    {
        eprintln!("skipped: needs sfdisk, blkid, fsck.vfat and mtype");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let files = vec![
        (
            "meta-data",
            b"instance-id: m-1\nlocal-hostname: web-1\n".to_vec(),
        ),
        (
            "user-data",
            b"#cloud-config\nruncmd: [ [touch, /ran] ]\n".to_vec(),
        ),
    ];
    // A GPT image with an ESP and a root, deployed to a disk four times its size.
    let gpt = image(
        dir.path(),
        "gpt",
        "start=2048, size=8MiB, type=U\nsize=+, type=L\n",
        32,
        128,
    )?;
    check(&gpt, &files, "gpt")?;
    // An MBR image (the project's cloud image), one partition active.
    let mbr = image(
        dir.path(),
        "dos",
        "start=2048, size=8MiB, type=c, bootable\nsize=+, type=83\n",
        32,
        128,
    )?;
    check(&mbr, &files, "mbr")?;
    // An image that fills its disk leaves no room: refused, the table untouched.
    let full = image(dir.path(), "dos", "start=2048, type=83\n", 64, 64)?;
    let before = std::fs::read(&full)?;
    let err = seed::write(&full, &files).unwrap_err();
    assert!(
        substruct_runtime::error_chain(&err).contains("no free space at the end of the disk"),
        "{}",
        substruct_runtime::error_chain(&err)
    );
    assert_eq!(std::fs::read(&full)?, before);
    Ok(())
}

/// An image deployed without a seed: its GPT fitted to the disk is what sfdisk expects
/// (before the fit, sfdisk complains that the backup header is not at the disk's end).
#[test]
fn a_gpt_fitted_without_a_seed_verifies_with_sfdisk() -> Result<()> {
    if !have("sfdisk") {
        eprintln!("skipped: needs sfdisk");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let path = image(dir.path(), "gpt", "start=2048, size=8192\n", 8, 64)?;
    // sfdisk's complaints go to stderr.
    let complaints = |path: &Path| -> Result<String> {
        let out = Command::new("sfdisk").arg("--verify").arg(path).output()?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    let before = complaints(&path)?;
    ensure!(
        before.contains("backup GPT table is not on the end"),
        "the unfitted image should draw sfdisk's complaint: {before}"
    );
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)?;
    assert_eq!(
        substruct_prospector::seed::table::fit_gpt(&mut disk, 64 * MIB)?,
        Some(true)
    );
    drop(disk);
    let after = complaints(&path)?;
    ensure!(
        after.contains("No errors detected")
            && !after.contains("not on the end")
            && !after.contains("mismatch"),
        "sfdisk --verify after the fit: {after}"
    );
    let json: Value =
        serde_json::from_str(&tool(Command::new("sfdisk").arg("--json").arg(&path))?)?;
    assert_eq!(
        json["partitiontable"]["lastlba"].as_u64(),
        Some(64 * MIB / 512 - 34),
        "{json}"
    );
    assert_eq!(
        json["partitiontable"]["partitions"][0]["start"].as_u64(),
        Some(2048)
    );
    Ok(())
}
