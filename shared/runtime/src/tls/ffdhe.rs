//! Finite-field Diffie-Hellman for TLS 1.2 (`TLS_DHE_RSA_WITH_AES_256_GCM_SHA384` over
//! the RFC 7919 `ffdhe2048` group), for UEFI firmware whose TLS has no elliptic curves.
//!
//! rustls speaks DHE when its provider offers an FFDHE key-exchange group and a DHE
//! cipher suite; ring has neither. The suite here is ring's
//! `TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384` with only the key exchange changed (same
//! AEAD, PRF, hash and RSA signature schemes). The modular exponentiation is
//! `crypto-bigint`'s Montgomery form, constant-time in the exponent.
//!
//! Only TLS 1.2 uses it (a TLS 1.3 client that offers FFDHE offers ECDHE as well), and
//! it comes after every ECDHE suite and group, so no client that can do better gets it.

use std::sync::OnceLock;

use crypto_bigint::modular::runtime_mod::{DynResidue, DynResidueParams};
use crypto_bigint::{Encoding, U2048};
use rustls::crypto::{ActiveKeyExchange, CryptoProvider, SharedSecret, SupportedKxGroup};
use rustls::ffdhe_groups::{FfdheGroup, FFDHE2048};
use rustls::{
    CipherSuite, CipherSuiteCommon, Error, NamedGroup, PeerMisbehaved, ProtocolVersion,
    SupportedCipherSuite, Tls12CipherSuite,
};

/// Bytes of a public value and of the shared secret in `ffdhe2048`.
const LEN: usize = 256;
/// Bits of the private exponent: RFC 7919 §5.2 asks for at least twice the group's
/// security level (about 103 bits for ffdhe2048); 256 is the common choice.
const SECRET_BITS: usize = 256;

/// Appends the DHE suite and the `ffdhe2048` group to `provider` (after what it has).
pub fn add_to(provider: &mut CryptoProvider) {
    if let Some(suite) = dhe_suite() {
        provider.cipher_suites.push(suite);
        provider.kx_groups.push(&Ffdhe2048);
    }
}

/// `TLS_DHE_RSA_WITH_AES_256_GCM_SHA384`, built from ring's ECDHE-RSA twin. `None`
/// only if ring stopped offering that suite as TLS 1.2 (then firmware gets no DHE).
fn dhe_suite() -> Option<SupportedCipherSuite> {
    static SUITE: OnceLock<Option<Tls12CipherSuite>> = OnceLock::new();
    let suite = SUITE.get_or_init(|| {
        let SupportedCipherSuite::Tls12(ecdhe) =
            rustls::crypto::ring::cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        else {
            return None;
        };
        Some(Tls12CipherSuite {
            common: CipherSuiteCommon {
                suite: CipherSuite::TLS_DHE_RSA_WITH_AES_256_GCM_SHA384,
                hash_provider: ecdhe.common.hash_provider,
                confidentiality_limit: ecdhe.common.confidentiality_limit,
            },
            prf_provider: ecdhe.prf_provider,
            kx: rustls::crypto::KeyExchangeAlgorithm::DHE,
            sign: ecdhe.sign,
            aead_alg: ecdhe.aead_alg,
        })
    });
    suite.as_ref().map(SupportedCipherSuite::Tls12)
}

fn group() -> FfdheGroup<'static> {
    FFDHE2048
}

fn modulus() -> U2048 {
    U2048::from_be_slice(group().p)
}

fn params() -> &'static DynResidueParams<{ U2048::LIMBS }> {
    static PARAMS: OnceLock<DynResidueParams<{ U2048::LIMBS }>> = OnceLock::new();
    PARAMS.get_or_init(|| DynResidueParams::new(&modulus()))
}

/// `base ^ exponent mod p`, the exponent's low [`SECRET_BITS`] bits.
fn pow(base: &U2048, exponent: &U2048) -> U2048 {
    DynResidue::new(base, *params())
        .pow_bounded_exp(exponent, SECRET_BITS)
        .retrieve()
}

/// Whether `y` is a usable peer value: `1 < y < p - 1` (RFC 7919 §5.1; rules out the
/// values of order one and two).
fn acceptable(y: &U2048) -> bool {
    let one = U2048::ONE;
    let p_minus_one = modulus().wrapping_sub(&one);
    y > &one && y < &p_minus_one
}

/// The `ffdhe2048` group as a rustls key exchange.
#[derive(Debug)]
struct Ffdhe2048;

impl SupportedKxGroup for Ffdhe2048 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let mut bytes = [0u8; LEN];
        let secret_bytes = &mut bytes[LEN - SECRET_BITS / 8..];
        rand::RngCore::try_fill_bytes(&mut rand::rngs::OsRng, secret_bytes)
            .map_err(|_| Error::FailedToGetRandomBytes)?;
        let secret = U2048::from_be_slice(&bytes);
        let generator = U2048::from_be_slice(&left_pad(group().g));
        let public = pow(&generator, &secret);
        Ok(Box::new(Active {
            secret,
            public: public.to_be_bytes(),
        }))
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        Some(group())
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::FFDHE2048
    }

    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        version == ProtocolVersion::TLSv1_2
    }
}

/// `value` as [`LEN`] big-endian bytes (the generator is one byte).
fn left_pad(value: &[u8]) -> [u8; LEN] {
    let mut out = [0u8; LEN];
    let n = value.len().min(LEN);
    out[LEN - n..].copy_from_slice(&value[value.len() - n..]);
    out
}

struct Active {
    secret: U2048,
    public: [u8; LEN],
}

impl ActiveKeyExchange for Active {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<SharedSecret, Error> {
        // TLS 1.2 sends the peer's value without leading zeros.
        if peer.is_empty() || peer.len() > LEN {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        let y = U2048::from_be_slice(&left_pad(peer));
        if !acceptable(&y) {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        let shared = pow(&y, &self.secret);
        if shared == U2048::ONE {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        // Padded to the modulus' length; rustls strips the zeros for TLS 1.2.
        Ok(SharedSecret::from(&shared.to_be_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        &self.public
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        Some(group())
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::FFDHE2048
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_sides_agree() {
        let a = Ffdhe2048.start().expect("start a");
        let b = Ffdhe2048.start().expect("start b");
        assert_eq!(a.pub_key().len(), LEN);
        assert_ne!(a.pub_key(), b.pub_key());
        let a_pub = a.pub_key().to_vec();
        let b_pub = b.pub_key().to_vec();
        let ab = a.complete(&b_pub).expect("a completes");
        let ba = b.complete(&a_pub).expect("b completes");
        assert_eq!(ab.secret_bytes(), ba.secret_bytes());
        assert_eq!(ab.secret_bytes().len(), LEN);
    }

    #[test]
    fn matches_a_known_exponentiation() {
        // 2^5 mod p = 32 (p is 2048 bits): the Montgomery form round-trips.
        let five = U2048::from_u64(5);
        let two = U2048::from_u64(2);
        assert_eq!(pow(&two, &five), U2048::from_u64(32));
        // (p - 1)^2 = 1 mod p.
        let p_minus_one = modulus().wrapping_sub(&U2048::ONE);
        assert_eq!(pow(&p_minus_one, &two), U2048::ONE);
    }

    #[test]
    fn refuses_degenerate_peer_values() {
        let p = modulus().to_be_bytes();
        let p_minus_one = modulus().wrapping_sub(&U2048::ONE).to_be_bytes();
        for (what, peer) in [
            ("empty", vec![]),
            ("zero", vec![0]),
            ("one", vec![1]),
            ("p - 1", p_minus_one.to_vec()),
            ("p", p.to_vec()),
            ("too long", vec![1; LEN + 1]),
            ("all ones", vec![0xff; LEN]),
        ] {
            let kx = Ffdhe2048.start().expect("start");
            assert!(kx.complete(&peer).is_err(), "{what} was accepted");
        }
    }

    #[test]
    fn the_suite_is_dhe_and_comes_after_ecdhe() {
        let mut provider = rustls::crypto::ring::default_provider();
        let before = provider.cipher_suites.len();
        add_to(&mut provider);
        assert_eq!(provider.cipher_suites.len(), before + 1);
        let last = provider.cipher_suites.last().map(|s| s.suite());
        assert_eq!(last, Some(CipherSuite::TLS_DHE_RSA_WITH_AES_256_GCM_SHA384));
        assert_eq!(
            provider.kx_groups.last().map(|g| g.name()),
            Some(NamedGroup::FFDHE2048)
        );
    }
}
