//! `substruct images …`: registered images, with hashing and upload progress.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use futures::StreamExt as _;
use reqwest::Method;
use sha2::{Digest, Sha256};

use super::client::Api;
use super::output::{human_bytes, write_list, yes_no};
use super::{json_body, CliError};
use crate::api::{ImageView, NewImage, Uploaded};
use crate::images::{ImageKind, ImageRecord};

/// How long an upload may take.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// Registers FILE: its name, kind, sha256 and size.
    Add {
        file: PathBuf,
        #[arg(long)]
        kind: ImageKind,
        /// The name edges serve it under (`/images/NAME`); default: the file's name.
        #[arg(long)]
        name: Option<String>,
        /// Register the name, kind and sha256 only: every edge already holds the file
        /// in its image directory.
        #[arg(long)]
        no_upload: bool,
    },
    List {
        #[arg(long)]
        json: bool,
    },
}

/// Runs one `images` command.
pub(super) async fn run(
    api: &Api,
    command: ImagesCommand,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let output = match command {
        ImagesCommand::Add {
            file,
            kind,
            name,
            no_upload,
        } => {
            let name = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .map(str::to_owned)
                    .ok_or_else(|| CliError::Invalid {
                        path: file.clone(),
                        message: "has no usable file name; pass --name".into(),
                    })?,
            };
            // A disk image the prospector could not deploy is refused before any upload.
            let format = match kind {
                ImageKind::Disk => Some(disk_format(&file)?),
                _ => None,
            };
            let (sha256, size) = hash_file(&file)?;
            if !no_upload {
                upload(api, &file, &sha256, size).await?;
            }
            let body = NewImage {
                name,
                kind,
                sha256,
                size,
            };
            let body = json_body(&file, &body)?;
            let image: ImageRecord = api.call(Method::POST, &["images"], Some(body)).await?;
            writeln!(
                out,
                "image {} registered: {} {}{} sha256 {}",
                image.name,
                image.kind,
                human_bytes(image.size),
                format.map(|f| format!(" ({f})")).unwrap_or_default(),
                image.sha256
            )
        }
        ImagesCommand::List { json } => {
            let images: Vec<ImageView> = api.get(&["images"]).await?;
            write_list(
                out,
                json,
                &images,
                &["NAME", "KIND", "SIZE", "SHA256", "STORED", "CACHED AT"],
                |v| {
                    let i = &v.image;
                    vec![
                        i.name.to_string(),
                        i.kind.to_string(),
                        human_bytes(i.size),
                        i.sha256.as_str().chars().take(16).collect(),
                        if v.stored {
                            yes_no(true)
                        } else {
                            "no (edge files)".to_owned()
                        },
                        if v.sites.is_empty() {
                            "-".to_owned()
                        } else {
                            v.sites.join(",")
                        },
                    ]
                },
            )
        }
    };
    output.map_err(CliError::Output)
}

/// A progress bar on stderr, redrawn every 5 %.
struct Progress {
    verb: &'static str,
    shown: u64,
}

impl Progress {
    fn new(verb: &'static str) -> Self {
        Self { verb, shown: 0 }
    }

    /// Redraws when `pct` moved 5 points (or `force`); the bar is `[####    ] 40%`.
    fn show(&mut self, pct: u64, force: bool, suffix: &str) {
        if pct >= self.shown + 5 || force {
            self.shown = pct;
            let bar = "#".repeat((pct / 5) as usize);
            let _ = write!(
                std::io::stderr(),
                "\r{} [{bar:<20}] {pct:>3}%{suffix}",
                self.verb
            );
        }
    }
}

/// sha256 and size of a file, with a progress line on stderr for big files.
/// What a disk image file is by its first bytes (`raw`, `qcow2, 556.0 MiB inside`, …),
/// or why the prospector could not deploy it.
fn disk_format(path: &Path) -> Result<String, CliError> {
    use substruct_wire::image_format::{describe, HEAD_BYTES};
    let read_err = |source| CliError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let mut head = Vec::with_capacity(HEAD_BYTES);
    file.take(HEAD_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(read_err)?;
    describe(&head, size).map_err(|e| CliError::Invalid {
        path: path.to_path_buf(),
        message: format!(
            "a qcow2 disk image the prospector cannot convert while it streams ({e}); \
             `qemu-img convert -O qcow2` (or `-O raw`) writes one it can"
        ),
    })
}

fn hash_file(path: &Path) -> Result<(String, u64), CliError> {
    let read_err = |source| CliError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_err)?;
    let total = file.metadata().map_err(read_err)?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    let mut progress = Progress::new("hashing");
    loop {
        let n = file.read(&mut buf).map_err(read_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        if total > 64 << 20 {
            progress.show(done * 100 / total.max(1), false, "");
        }
    }
    if progress.shown > 0 {
        let _ = writeln!(std::io::stderr());
    }
    Ok((hex::encode(hasher.finalize()), done))
}

/// Streams a file to `PUT /api/v1/images/content/{sha256}` with a progress bar.
async fn upload(api: &Api, file: &Path, sha256: &str, size: u64) -> Result<(), CliError> {
    let handle = tokio::fs::File::open(file)
        .await
        .map_err(|source| CliError::Read {
            path: file.to_path_buf(),
            source,
        })?;
    let mut sent = 0u64;
    let mut progress = Progress::new("uploading");
    let suffix = format!(" of {}", human_bytes(size));
    let stream = tokio_util::io::ReaderStream::with_capacity(handle, 1 << 20).map(move |chunk| {
        if let Ok(c) = &chunk {
            sent += c.len() as u64;
            if size > 8 << 20 {
                progress.show(sent * 100 / size.max(1), sent == size, &suffix);
                if sent == size {
                    let _ = writeln!(std::io::stderr());
                }
            }
        }
        chunk
    });
    let url = api.url(&["images", "content", sha256])?;
    let request = api
        .request(Method::PUT, url.clone())
        .timeout(UPLOAD_TIMEOUT)
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::wrap_stream(stream));
    let _: Uploaded = api.send(request, url).await?;
    Ok(())
}
