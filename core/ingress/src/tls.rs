//! TLS on the ingress: certificates, the store that picks one per connection by SNI, and
//! the rustls server configuration (ring provider, TLS 1.2 and 1.3, ALPN `h2` and
//! `http/1.1`).
//!
//! No rustls type leaves this crate: a [`Certificate`] is made from PEM bytes, and the
//! [`CertStore`] is filled by name. Whoever obtains certificates (the operator's files at
//! start, ACME later) only inserts them here.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// ALPN protocols offered, in our order of preference.
pub(crate) const ALPN_H2: &[u8] = b"h2";
const ALPN_HTTP11: &[u8] = b"http/1.1";
/// ACME's TLS-ALPN-01 validation (RFC 8737): a handshake that proves control of a name,
/// and nothing after it.
pub(crate) const ALPN_ACME_TLS: &[u8] = b"acme-tls/1";

/// Why a certificate or its key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("no PEM certificate found (expected a \"-----BEGIN CERTIFICATE-----\" block)")]
    NoCertificate,
    #[error("the certificate PEM is malformed: {0}")]
    CertificatePem(String),
    #[error(
        "no PEM private key found (expected a PKCS#8 \"PRIVATE KEY\", SEC1 \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\" block)"
    )]
    NoKey,
    #[error("the private key PEM is malformed: {0}")]
    KeyPem(String),
    #[error("the private key is not one this server can sign with: {0}")]
    UnsupportedKey(String),
    #[error("the private key does not match the certificate (the first certificate of the chain)")]
    KeyMismatch,
    #[error("the certificate cannot be read: {0}")]
    BadCertificate(String),
}

/// A certificate chain (the leaf first) with its private key, ready to be served.
#[derive(Clone)]
pub struct Certificate(Arc<CertifiedKey>);

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate").field("chain_len", &self.0.cert.len()).finish_non_exhaustive()
    }
}

impl Certificate {
    /// The self-signed certificate of an ACME TLS-ALPN-01 validation (RFC 8737), made by
    /// this server with its key. Its critical `acmeIdentifier` extension is one no X.509
    /// parser for real certificates accepts, so the key is not compared with it: it is
    /// only ever shown to a CA that asks with `acme-tls/1`.
    pub fn tls_alpn01(cert: &[u8], key: &[u8]) -> Result<Certificate, CertificateError> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| CertificateError::CertificatePem(err.to_string()))?;
        if chain.is_empty() {
            return Err(CertificateError::NoCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|err| CertificateError::KeyPem(err.to_string()))?;
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|err| CertificateError::UnsupportedKey(err.to_string()))?;
        Ok(Certificate(Arc::new(CertifiedKey::new(chain, signing))))
    }

    /// Reads a PEM chain (leaf first, then intermediates) and a PEM private key (PKCS#8,
    /// SEC1 or PKCS#1 RSA), and checks that the key is the leaf's.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<Certificate, CertificateError> {
        let chain = CertificateDer::pem_slice_iter(chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| CertificateError::CertificatePem(err.to_string()))?;
        if chain.is_empty() {
            return Err(CertificateError::NoCertificate);
        }
        let key = match PrivateKeyDer::from_pem_slice(key) {
            Ok(key) => key,
            Err(pem::Error::NoItemsFound) => return Err(CertificateError::NoKey),
            Err(err) => return Err(CertificateError::KeyPem(err.to_string())),
        };
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|err| CertificateError::UnsupportedKey(err.to_string()))?;
        let certified = CertifiedKey::new(chain, signing);
        match certified.keys_match() {
            Ok(()) => Ok(Certificate(Arc::new(certified))),
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                Err(CertificateError::KeyMismatch)
            }
            // A key whose public half rustls cannot derive is refused too: serving a
            // certificate nobody checked against its key would fail every handshake.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Err(CertificateError::UnsupportedKey("its public key cannot be compared with the certificate's".into()))
            }
            Err(err) => Err(CertificateError::BadCertificate(err.to_string())),
        }
    }
}

/// The certificates the ingress serves, chosen per connection by the name the client
/// asks for (SNI): an exact name first, then the operator's wildcard for a name one label
/// under the app domain. Any other name, or none, gets no certificate: the handshake
/// fails, so a client never gets another project's certificate.
///
/// Cheap to clone (all clones share the store); changes apply to new connections.
#[derive(Clone)]
pub struct CertStore(Arc<Inner>);

struct Inner {
    /// `.<domain>`, lowercase.
    suffix: Box<str>,
    certs: RwLock<Certs>,
}

#[derive(Default)]
struct Certs {
    /// By lowercase host name without a trailing dot.
    exact: HashMap<Box<str>, Certificate>,
    /// For `*.<domain>`.
    wildcard: Option<Certificate>,
    /// ACME HTTP-01 answers in progress: token → key authorization.
    http01: HashMap<Box<str>, Box<str>>,
    /// ACME TLS-ALPN-01 certificates in progress, by name: served only to a client that
    /// offers `acme-tls/1` alone, which is what a CA's validation does.
    alpn01: HashMap<Box<str>, Certificate>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let certs = self.0.certs.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("CertStore")
            .field("domain", &self.0.suffix.trim_start_matches('.'))
            .field("names", &certs.exact.keys().collect::<Vec<_>>())
            .field("wildcard", &certs.wildcard.is_some())
            .finish()
    }
}

impl CertStore {
    /// An empty store for apps under `domain` (`blog` at `blog.<domain>`).
    pub fn new(domain: &str) -> CertStore {
        let domain = domain.trim_matches('.').to_ascii_lowercase();
        CertStore(Arc::new(Inner { suffix: format!(".{domain}").into(), certs: RwLock::default() }))
    }

    /// Sets (or with `None` removes) the certificate for `*.<domain>`, served for every
    /// name one label under the domain that has no certificate of its own.
    pub fn set_wildcard(&self, cert: Option<Certificate>) {
        self.write().wildcard = cert;
    }

    /// Inserts or replaces the certificate for exactly `name` (any case, a trailing dot
    /// ignored). Returns the one it replaced.
    pub fn insert(&self, name: &str, cert: Certificate) -> Option<Certificate> {
        self.write().exact.insert(normalize(name).into(), cert)
    }

    /// Removes the certificate for exactly `name`; returns it.
    pub fn remove(&self, name: &str) -> Option<Certificate> {
        self.write().exact.remove(normalize(name).as_str())
    }

    /// Answers ACME's HTTP-01 validation of `token` with `key_authorization` (on the plain
    /// listener, at `/.well-known/acme-challenge/TOKEN`, for any host) until removed.
    pub fn add_http01(&self, token: &str, key_authorization: &str) {
        self.write().http01.insert(token.into(), key_authorization.into());
    }

    pub fn remove_http01(&self, token: &str) {
        self.write().http01.remove(token);
    }

    /// The key authorization to answer for `token`, while its validation is in progress.
    pub(crate) fn http01(&self, token: &str) -> Option<Box<str>> {
        let certs = self.0.certs.read().unwrap_or_else(PoisonError::into_inner);
        certs.http01.get(token).cloned()
    }

    /// Answers ACME's TLS-ALPN-01 validation of `name` with `cert` (the self-signed
    /// certificate carrying the `acmeIdentifier` extension) until removed.
    pub fn add_alpn01(&self, name: &str, cert: Certificate) {
        self.write().alpn01.insert(normalize(name).into(), cert);
    }

    pub fn remove_alpn01(&self, name: &str) {
        self.write().alpn01.remove(normalize(name).as_str());
    }

    /// Whether a connection for `name` would get a certificate.
    pub fn serves(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Certs> {
        self.0.certs.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn find(&self, name: &str) -> Option<Certificate> {
        let name = normalize(name);
        let certs = self.0.certs.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(cert) = certs.exact.get(name.as_str()) {
            return Some(cert.clone());
        }
        let label = name.strip_suffix(&*self.0.suffix)?;
        if label.is_empty() || label.contains('.') {
            return None;
        }
        certs.wildcard.clone()
    }

    /// The rustls configuration serving this store's certificates.
    pub(crate) fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring's provider supports TLS 1.2 and 1.3")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(self.clone()));
        // `acme-tls/1` last: rustls picks the first of ours a client offers, and only a
        // CA's validation offers it.
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP11.to_vec(), ALPN_ACME_TLS.to_vec()];
        Arc::new(config)
    }
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certs").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // No SNI: no name to pick a certificate for, and no default one to give away.
        let name = hello.server_name()?;
        let mut offered = hello.alpn().into_iter().flatten();
        if offered.any(|protocol| protocol == ALPN_ACME_TLS) {
            // A validation gets the challenge certificate or nothing: never a real one,
            // which would be a handshake on a connection that carries no HTTP.
            let certs = self.0.certs.read().unwrap_or_else(PoisonError::into_inner);
            return certs.alpn01.get(normalize(name).as_str()).map(|cert| Arc::clone(&cert.0));
        }
        let found = self.find(name).map(|cert| cert.0);
        if found.is_none() {
            tracing::debug!(sni = %name, "no certificate for this name: refusing the handshake");
        }
        found
    }
}

fn normalize(name: &str) -> String {
    let name = name.strip_suffix('.').unwrap_or(name);
    name.to_ascii_lowercase()
}

/// ring, and nothing else.
fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Certificate {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let made = rcgen::generate_simple_self_signed(names).expect("generate");
        Certificate::from_pem(made.cert.pem().as_bytes(), made.signing_key.serialize_pem().as_bytes())
            .expect("a valid certificate")
    }

    #[test]
    fn picks_exact_then_wildcard_for_one_label_under_the_domain() {
        let store = CertStore::new("Apps.Test.");
        assert!(!store.serves("blog.apps.test"), "nothing before a certificate is set");
        store.set_wildcard(Some(cert(&["*.apps.test"])));
        store.insert("www.example.com", cert(&["www.example.com"]));
        let cases: &[(&str, bool)] = &[
            ("blog.apps.test", true),
            ("BLOG.Apps.Test.", true),
            ("www.example.com", true),
            ("WWW.example.com.", true),
            ("apps.test", false),
            (".apps.test", false),
            ("a.b.apps.test", false),
            ("blog.apps.test.evil", false),
            ("blogapps.test", false),
            ("example.com", false),
            ("other.example.com", false),
            ("", false),
        ];
        for (name, want) in cases {
            assert_eq!(store.serves(name), *want, "{name:?}");
        }
        let exact = store.insert("blog.apps.test", cert(&["blog.apps.test"]));
        assert!(exact.is_none());
        let found = store.find("blog.apps.test").expect("exact");
        let wildcard = store.find("shop.apps.test").expect("wildcard");
        assert!(!Arc::ptr_eq(&found.0, &wildcard.0), "the exact name wins over the wildcard");
        assert!(store.remove("BLOG.apps.test").is_some());
        assert!(store.serves("blog.apps.test"), "back to the wildcard");
        store.set_wildcard(None);
        assert!(!store.serves("blog.apps.test"));
        assert!(store.serves("www.example.com"));
    }

    #[test]
    fn refuses_bad_pem_and_a_key_of_another_certificate() {
        let a = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).expect("generate");
        let b = rcgen::generate_simple_self_signed(vec!["b.test".to_owned()]).expect("generate");
        let (a_cert, a_key, b_key) = (a.cert.pem(), a.signing_key.serialize_pem(), b.signing_key.serialize_pem());
        let err = |chain: &str, key: &str| Certificate::from_pem(chain.as_bytes(), key.as_bytes()).map(|_| ());
        assert!(err(&a_cert, &a_key).is_ok());
        assert!(matches!(err("", &a_key), Err(CertificateError::NoCertificate)));
        assert!(matches!(err(&a_key, &a_key), Err(CertificateError::NoCertificate)));
        assert!(matches!(err(&a_cert, &a_cert), Err(CertificateError::NoKey)));
        assert!(matches!(err(&a_cert, &b_key), Err(CertificateError::KeyMismatch)));
        let broken = a_cert.replace("-----END CERTIFICATE-----", "");
        assert!(matches!(err(&broken, &a_key), Err(CertificateError::CertificatePem(_))), "{:?}", err(&broken, &a_key));
        let garbled = {
            let mut lines: Vec<&str> = a_cert.lines().collect();
            lines[1] = "!!!!not base64!!!!";
            lines.join("\n")
        };
        assert!(matches!(err(&garbled, &a_key), Err(CertificateError::CertificatePem(_))));
    }
}
