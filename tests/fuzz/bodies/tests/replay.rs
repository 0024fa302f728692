//! The bounded fuzz run of `cargo test`: every fuzz target's body (the same function
//! its libFuzzer binary calls) over
//! - every checked-in seed, `tests/fuzz/seeds/NAME/*`;
//! - every crash artifact libFuzzer left locally, `tests/fuzz/artifacts/NAME/*` (not
//!   checked in; a crash that was fixed must not come back);
//! - [`MUTATIONS`] (fewer for a slow target) deterministic mutations of those: bit
//!   flips, byte inserts and deletes, truncations, splices of two inputs, interesting
//!   values (0, 0xff, 0x7f, 0x80, lengths) — no coverage feedback, the same inputs on
//!   every run.
//!
//! libFuzzer's working corpus (`tests/fuzz/corpus`) is not checked in and not replayed.
//!
//! A panicking body fails its test with the target's name, the panic and the input in
//! hex; the input is also written to a file under cargo's test temp dir, ready to be
//! copied into `tests/fuzz/seeds/NAME/` as a regression seed. Each target prints
//! `fuzz replay NAME: ... inputs in T s` to stderr, shown even when the test passes.
//!
//! `SUBSTRUCT_FUZZ_REPLAY_MUTATIONS=N` runs N mutations per target instead (a longer
//! local run); `SUBSTRUCT_FUZZ_REPLAY_SEED=S` draws other ones.
//!
//! [`every_fuzz_target_is_replayed`] keeps the targets replayed here equal to the
//! `[[bin]]`s of `tests/fuzz/Cargo.toml`, so a new target cannot skip the replay.

use std::fmt::Write as _;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Mutations per target, unless the target's entry in [`replay_targets!`] says
/// otherwise (a slow one gets fewer): all 20 targets together take about 6 s of CPU in
/// a debug build, 4 to 9 s on 2 cores depending on what else runs.
const MUTATIONS: u64 = 5000;

/// Mutated inputs are cut to this length (the largest seed is a few KiB).
const MAX_LEN: usize = 64 * 1024;

/// One `#[test]` per fuzz target, named after it, running [`MUTATIONS`] mutations or the
/// number given after `=`; and the list of their names.
macro_rules! replay_targets {
    (@mutations) => {
        MUTATIONS
    };
    (@mutations $mutations:expr) => {
        $mutations
    };
    ($($name:ident $(= $mutations:expr)?),+ $(,)?) => {
        /// Every target this file replays.
        const REPLAYED: &[&str] = &[$(stringify!($name)),+];
        $(
            #[test]
            fn $name() {
                replay(
                    stringify!($name),
                    substruct_fuzz_bodies::$name,
                    replay_targets!(@mutations $($mutations)?),
                );
            }
        )+
    };
}

replay_targets!(
    bmc_ipmi,
    controller_discover,
    // signs and verifies an Ed25519 credential per input: ~15 ms in a debug build
    credential = 200,
    dhcp6_decide,
    dhcp_decide,
    dhcp_packet,
    edge_http_head,
    edge_http_range,
    facts_text,
    // parses TOML and renders the template: ~0.5 ms in a debug build
    profile_toml = 2500,
    prospector_dhcp,
    prospector_http_head,
    prospector_protocol,
    ra,
    rule_toml,
    smbios,
    template_render,
    tftp_packet,
    tftp_transfer,
    wire_decode,
    wire_names,
);

/// The fuzz targets of `tests/fuzz/Cargo.toml` are exactly the ones replayed here, each
/// is the one-line call of its body, and each has checked-in seeds.
#[test]
fn every_fuzz_target_is_replayed() {
    let manifest_path = fuzz_dir().join("Cargo.toml");
    let manifest: toml::Table = std::fs::read_to_string(&manifest_path)
        .expect("tests/fuzz/Cargo.toml is readable")
        .parse()
        .expect("tests/fuzz/Cargo.toml is TOML");
    let bins = manifest
        .get("bin")
        .and_then(toml::Value::as_array)
        .expect("tests/fuzz/Cargo.toml has [[bin]] sections");
    let mut targets = Vec::new();
    for bin in bins {
        let name = bin
            .get("name")
            .and_then(toml::Value::as_str)
            .expect("every [[bin]] has a name");
        let path = bin
            .get("path")
            .and_then(toml::Value::as_str)
            .expect("every [[bin]] has a path");
        assert_eq!(
            path,
            format!("fuzz_targets/{name}.rs"),
            "fuzz target {name}"
        );
        let source = std::fs::read_to_string(fuzz_dir().join(path))
            .unwrap_or_else(|e| panic!("fuzz target {name}: {path}: {e}"));
        let call = format!("substruct_fuzz_bodies::{name}(data)");
        assert!(
            source.contains(&call),
            "fuzz target {name}: {path} does not call {call}: the replay would test other code"
        );
        let seeds = files_in(&fuzz_dir().join("seeds").join(name));
        assert!(
            !seeds.is_empty(),
            "fuzz target {name} has no seeds in tests/fuzz/seeds/{name}"
        );
        targets.push(name.to_owned());
    }
    targets.sort();
    let mut sources: Vec<String> = files_in(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_owned()))
        .collect();
    sources.sort();
    assert_eq!(
        sources, targets,
        "tests/fuzz/fuzz_targets/*.rs and the [[bin]]s of tests/fuzz/Cargo.toml differ"
    );
    let mut replayed: Vec<String> = REPLAYED.iter().map(|&n| n.to_owned()).collect();
    replayed.sort();
    assert_eq!(
        targets,
        replayed,
        "the [[bin]]s of {} and the targets of tests/fuzz/bodies/tests/replay.rs differ",
        manifest_path.display()
    );
}

/// `tests/fuzz`.
fn fuzz_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the bodies crate is in tests/fuzz")
}

/// One input and where it came from, for the report.
struct Input {
    origin: String,
    data: Vec<u8>,
}

/// Runs `body` over the seeds, the local crash artifacts and the mutations of target
/// `name`; panics with a report at the first input that panics.
fn replay(name: &str, body: fn(&[u8]), mutations: u64) {
    let started = Instant::now();
    let seeds = read_inputs(&fuzz_dir().join("seeds").join(name));
    let artifacts = read_inputs(&fuzz_dir().join("artifacts").join(name));
    let mut pool: Vec<Input> = seeds.into_iter().chain(artifacts).collect();
    let n_seeds_and_artifacts = pool.len();
    for input in &pool {
        run(name, body, input);
    }
    if pool.is_empty() {
        pool.push(Input {
            origin: "the empty input".into(),
            data: Vec::new(),
        });
    }
    let mutations = env_u64("SUBSTRUCT_FUZZ_REPLAY_MUTATIONS").unwrap_or(mutations);
    let seed = env_u64("SUBSTRUCT_FUZZ_REPLAY_SEED").unwrap_or(0);
    let mut rng = Rng::new(fnv1a(name.as_bytes()) ^ seed);
    for i in 0..mutations {
        let (base, data) = mutate(&pool, &mut rng);
        let input = Input {
            origin: format!(
                "mutation {i} (SUBSTRUCT_FUZZ_REPLAY_SEED={seed}) of {}",
                pool[base].origin
            ),
            data,
        };
        run(name, body, &input);
    }
    // Straight to stderr, past libtest's capture: the counts and time show on every run.
    let _ = writeln!(
        std::io::stderr().lock(),
        "fuzz replay {name}: {} inputs ({n_seeds_and_artifacts} seeds and artifacts, \
         {mutations} mutations) in {:.2} s",
        n_seeds_and_artifacts as u64 + mutations,
        started.elapsed().as_secs_f64()
    );
}

/// `body(input)`; a panic becomes the test's failure, with the input in hex and in a file.
fn run(name: &str, body: fn(&[u8]), input: &Input) {
    let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(&input.data))) else {
        return;
    };
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(not a string)".into());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fuzz-replay")
        .join(name);
    let file = dir.join(format!("crash-{:016x}", fnv1a(&input.data)));
    let saved = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&file, &input.data))
        .map(|()| {
            format!(
                "saved as {}; keep it as a regression seed:\n  cp {} tests/fuzz/seeds/{name}/regression-WHAT",
                file.display(),
                file.display()
            )
        })
        .unwrap_or_else(|e| format!("not saved ({}: {e})", file.display()));
    panic!(
        "fuzz target {name} panicked on {}: {message}\ninput ({} bytes, hex): {}\n{saved}",
        input.origin,
        input.data.len(),
        hex(&input.data)
    );
}

/// The files in `dir` (none if it does not exist), sorted by name.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// The contents of the files in `dir`, sorted by name.
fn read_inputs(dir: &Path) -> Vec<Input> {
    files_in(dir)
        .into_iter()
        .map(|path| {
            let data =
                std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let origin = path
                .strip_prefix(fuzz_dir())
                .unwrap_or(&path)
                .display()
                .to_string();
            Input { origin, data }
        })
        .collect()
}

/// A whole-number environment variable, if set.
fn env_u64(var: &str) -> Option<u64> {
    let value = std::env::var(var).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{var}={value:?} is not a whole number")),
    )
}

/// Lower-case hex of `data`.
fn hex(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// 64-bit FNV-1a: a stable hash for per-target seeds and file names.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// xorshift64*: small, fast and the same on every platform and run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that near seeds start far apart; never 0
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Self((z ^ (z >> 31)).max(1))
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n`; `n` > 0.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// In `0..=n`: a position to insert at or cut at.
    fn upto(&mut self, n: usize) -> usize {
        self.below(n + 1)
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }
}

/// Bytes that break parsers: zero, all ones, the signed edges, one and one below.
const INTERESTING_BYTES: [u8; 6] = [0x00, 0xff, 0x7f, 0x80, 0x01, 0xfe];

/// Mutates a random input of `pool` with one to four stacked edits; returns which
/// input it started from and the result.
fn mutate(pool: &[Input], rng: &mut Rng) -> (usize, Vec<u8>) {
    let base = rng.below(pool.len());
    let mut data = pool[base].data.clone();
    for _ in 0..=rng.below(4) {
        edit(&mut data, pool, rng);
    }
    data.truncate(MAX_LEN);
    (base, data)
}

/// One random edit of `data`; an edit that needs bytes inserts some into an empty input.
fn edit(data: &mut Vec<u8>, pool: &[Input], rng: &mut Rng) {
    let len = data.len();
    let kind = if len == 0 { 3 } else { rng.below(12) };
    match kind {
        // flip one bit
        0 => data[rng.below(len)] ^= 1 << rng.below(8),
        // a random byte
        1 => data[rng.below(len)] = rng.byte(),
        // an interesting byte
        2 => data[rng.below(len)] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len())],
        // insert 1 to 8 random bytes, or one byte repeated up to 64 times
        3 => {
            let at = rng.upto(len);
            let bytes: Vec<u8> = if rng.below(2) == 0 {
                (0..=rng.below(8)).map(|_| rng.byte()).collect()
            } else {
                vec![rng.byte(); 1 + rng.below(64)]
            };
            data.splice(at..at, bytes);
        }
        // delete 1 to 16 bytes
        4 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(16)).min(len);
            data.drain(at..end);
        }
        // truncate
        5 => data.truncate(rng.below(len)),
        // splice: this input's head, another input's tail
        6 => {
            let other = &pool[rng.below(pool.len())].data;
            let from = rng.upto(other.len());
            data.truncate(rng.upto(len));
            data.extend_from_slice(&other[from..]);
        }
        // insert a piece of another input
        7 => {
            let other = &pool[rng.below(pool.len())].data;
            let from = rng.upto(other.len());
            let to = (from + 1 + rng.below(32)).min(other.len());
            let at = rng.upto(len);
            data.splice(at..at, other[from..to].iter().copied());
        }
        // repeat a piece of this input elsewhere in it (a token, a TLV, a line)
        8 => {
            let from = rng.below(len);
            let to = (from + 1 + rng.below(32)).min(len);
            let piece = data[from..to].to_vec();
            let at = rng.upto(len);
            data.splice(at..at, piece);
        }
        // add or subtract a little (counts, lengths, ASCII digits)
        9 => {
            let at = rng.below(len);
            let delta = 1 + rng.byte() % 16;
            data[at] = if rng.below(2) == 0 {
                data[at].wrapping_add(delta)
            } else {
                data[at].wrapping_sub(delta)
            };
        }
        // a 16- or 32-bit interesting value, either byte order
        10 => {
            let values: [u32; 8] = [
                0,
                0xffff_ffff,
                0x7fff_ffff,
                0x8000_0000,
                0xffff,
                0x7fff,
                0x8000,
                0x0100,
            ];
            let value = values[rng.below(values.len())];
            let at = rng.below(len);
            write_number(data, rng, at, u64::from(value));
        }
        // a length field: of the whole input, or of what follows the field (or one off)
        _ => {
            let at = rng.below(len);
            let rest = len - at;
            let length = match rng.below(4) {
                0 => len,
                1 => rest.saturating_sub(2),
                2 => rest.saturating_sub(1),
                _ => rest,
            };
            write_number(data, rng, at, length as u64);
        }
    }
}

/// Writes the low 1, 2 or 4 bytes of `value`, little- or big-endian, over `data` at
/// `at` (cut off at its end).
fn write_number(data: &mut [u8], rng: &mut Rng, at: usize, value: u64) {
    let width = [1, 2, 4][rng.below(3)];
    let le = value.to_le_bytes();
    let bytes: Vec<u8> = if rng.below(2) == 0 {
        le[..width].to_vec()
    } else {
        le[..width].iter().rev().copied().collect()
    };
    for (slot, b) in data[at..].iter_mut().zip(bytes) {
        *slot = b;
    }
}
