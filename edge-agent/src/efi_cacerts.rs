//! CA certificates in the form UEFI firmware trusts for HTTPS boot: an
//! `EFI_SIGNATURE_LIST` per certificate (type `EFI_CERT_X509_GUID`, one DER entry each),
//! the content of the `TlsCaCertificate` variable. OVMF takes it from the QEMU fw_cfg
//! file `etc/edk2/https/cacerts`; on hardware the CA is enrolled in the firmware's setup.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// `EFI_CERT_X509_GUID` (a5c059a1-94e4-4aa7-87b5-ab155c2bf072), as stored: the first
/// three fields little-endian.
const EFI_CERT_X509_GUID: [u8; 16] = [
    0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0, 0x72,
];
/// The signature owner written into each entry: Substruct's own GUID
/// (5b1c0f6e-5ab5-4c7e-9a3d-7375627374ef).
const OWNER_GUID: [u8; 16] = [
    0x6e, 0x0f, 0x1c, 0x5b, 0xb5, 0x5a, 0x7e, 0x4c, 0x9a, 0x3d, 0x73, 0x75, 0x62, 0x73, 0x74, 0xef,
];
/// Bytes of an `EFI_SIGNATURE_LIST` header (GUID + three u32).
const LIST_HEADER: usize = 28;

#[derive(Debug, thiserror::Error)]
pub enum EfiCaCertsError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid PEM")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no CERTIFICATE block")]
    Empty { path: PathBuf },
    #[error("a certificate in {path} is too large for an EFI signature list")]
    TooLarge { path: PathBuf },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Every certificate of the PEM text `pem` (read from `path`, named in errors) as
/// EFI signature lists.
pub fn from_pem(path: &Path, pem: &[u8]) -> Result<Vec<u8>, EfiCaCertsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| EfiCaCertsError::Pem {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(EfiCaCertsError::Empty {
            path: path.to_owned(),
        });
    }
    let mut out = Vec::new();
    for cert in &certs {
        let too_large = || EfiCaCertsError::TooLarge {
            path: path.to_owned(),
        };
        let signature_size =
            u32::try_from(OWNER_GUID.len() + cert.len()).map_err(|_| too_large())?;
        let list_size = signature_size
            .checked_add(LIST_HEADER as u32)
            .ok_or_else(too_large)?;
        out.extend_from_slice(&EFI_CERT_X509_GUID);
        out.extend_from_slice(&list_size.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // SignatureHeaderSize
        out.extend_from_slice(&signature_size.to_le_bytes());
        out.extend_from_slice(&OWNER_GUID);
        out.extend_from_slice(cert);
    }
    Ok(out)
}

/// `substruct-edge efi-cacerts CA.pem OUT`: writes `ca`'s certificates to `out`.
pub fn convert(ca: &Path, out: &Path) -> Result<usize, EfiCaCertsError> {
    let pem = std::fs::read(ca).map_err(|source| EfiCaCertsError::Read {
        path: ca.to_owned(),
        source,
    })?;
    let lists = from_pem(ca, &pem)?;
    std::fs::write(out, &lists).map_err(|source| EfiCaCertsError::Write {
        path: out.to_owned(),
        source,
    })?;
    Ok(lists.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n";

    #[test]
    fn one_list_per_certificate_with_exact_sizes() {
        let two = format!("{PEM}{PEM}");
        let out = from_pem(Path::new("ca.pem"), two.as_bytes()).expect("converts");
        // DER of the block is 5 bytes: each list is 28 + 16 + 5.
        assert_eq!(out.len(), 2 * (28 + 16 + 5));
        assert_eq!(&out[..16], &EFI_CERT_X509_GUID);
        assert_eq!(out[16..20], 49u32.to_le_bytes());
        assert_eq!(out[20..24], 0u32.to_le_bytes());
        assert_eq!(out[24..28], 21u32.to_le_bytes());
        assert_eq!(&out[28..44], &OWNER_GUID);
        assert_eq!(&out[44..49], &[0x30, 0x03, 0x02, 0x01, 0x01]);
        assert_eq!(&out[49..65], &EFI_CERT_X509_GUID);
    }

    #[test]
    fn refuses_text_without_a_certificate() {
        let key = "-----BEGIN PRIVATE KEY-----\nMAMCAQE=\n-----END PRIVATE KEY-----\n";
        for (what, text) in [("empty", ""), ("only a key", key), ("junk", "hello")] {
            let e = from_pem(Path::new("x.pem"), text.as_bytes());
            assert!(
                matches!(e, Err(EfiCaCertsError::Empty { .. })),
                "{what}: {e:?}"
            );
        }
    }

    #[test]
    fn refuses_broken_base64() {
        let bad = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let e = from_pem(Path::new("x.pem"), bad.as_bytes());
        assert!(matches!(e, Err(EfiCaCertsError::Pem { .. })), "{e:?}");
    }
}
