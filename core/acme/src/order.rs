//! One ACME order for one name: the authorization's challenge answered by the ingress,
//! then the key, the CSR and the certificate.

use std::time::Duration;

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewOrder, Order, OrderStatus, RetryPolicy,
};
use paastech_ingress::{CertStore, Certificate};

use crate::ChallengeKind;

/// What an order yields: the chain (leaf first) and its private key, as PEM.
pub(crate) struct Issued {
    pub chain: String,
    pub key: String,
}

/// Why an order failed, in words for the user (and the log).
#[derive(Debug, thiserror::Error)]
pub(crate) enum OrderError {
    #[error("{0}")]
    Failed(String),
    /// The CA does not know the account (it forgot it, or the account was deactivated):
    /// a new account may succeed.
    #[error("the ACME server does not know this server's account: {0}")]
    UnknownAccount(String),
}

/// Says what an error from the ACME client means.
pub(crate) fn explain(what: &str, err: instant_acme::Error) -> OrderError {
    match err {
        instant_acme::Error::Api(problem)
            if problem.r#type.as_deref() == Some("urn:ietf:params:acme:error:accountDoesNotExist") =>
        {
            OrderError::UnknownAccount(problem.to_string())
        }
        instant_acme::Error::Api(problem) => {
            OrderError::Failed(format!("{what}: the ACME server refused: {}", problem_text(&problem)))
        }
        instant_acme::Error::Timeout(_) => {
            OrderError::Failed(format!("{what}: the ACME server did not finish in time"))
        }
        other => OrderError::Failed(format!("{what}: {other}")),
    }
}

fn problem_text(problem: &instant_acme::Problem) -> String {
    let mut text = problem.detail.clone().unwrap_or_else(|| "no detail given".into());
    if let Some(kind) = problem.r#type.as_deref().and_then(|t| t.strip_prefix("urn:ietf:params:acme:error:")) {
        text.push_str(&format!(" ({kind})"));
    }
    for sub in &problem.subproblems {
        if let Some(detail) = &sub.detail {
            text.push_str(&format!("; {detail}"));
        }
    }
    text
}

/// How long the CA may take to validate, and then to issue.
const VALIDATION_POLL: RetryPolicy =
    RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(Duration::from_secs(90));

/// Orders a certificate for `name`, answering its challenge through `certs` while the CA
/// validates (and never after: the answers are removed whatever happens).
pub(crate) async fn order(
    account: &Account,
    name: &str,
    kind: ChallengeKind,
    certs: &CertStore,
) -> Result<Issued, OrderError> {
    let identifiers = [Identifier::Dns(name.to_owned())];
    let mut order =
        account.new_order(&NewOrder::new(&identifiers)).await.map_err(|e| explain("starting the order", e))?;
    let mut answers = Answers { certs, tokens: Vec::new(), alpn_names: Vec::new() };
    authorize(&mut order, name, kind, &mut answers).await?;

    let status = order.poll_ready(&VALIDATION_POLL).await;
    let status = match status {
        Ok(status) => status,
        Err(err) => return Err(why_invalid(&mut order, kind, explain("validating", err)).await),
    };
    if status != OrderStatus::Ready {
        let fallback = OrderError::Failed(format!("the order ended {status:?}"));
        return Err(why_invalid(&mut order, kind, fallback).await);
    }
    drop(answers);

    let key = order.finalize().await.map_err(|e| explain("finalizing the order", e))?;
    let chain = order.poll_certificate(&VALIDATION_POLL).await.map_err(|e| explain("fetching the certificate", e))?;
    Ok(Issued { chain, key })
}

/// Sets up the answer to each pending authorization's challenge and tells the CA.
async fn authorize(
    order: &mut Order,
    name: &str,
    kind: ChallengeKind,
    answers: &mut Answers<'_>,
) -> Result<(), OrderError> {
    let mut authorizations = order.authorizations();
    while let Some(authorization) = authorizations.next().await {
        let mut authorization = authorization.map_err(|e| explain("reading the authorization", e))?;
        match authorization.status {
            AuthorizationStatus::Pending => {}
            AuthorizationStatus::Valid => continue,
            other => {
                return Err(OrderError::Failed(format!("the authorization for {name} is {other:?}")));
            }
        }
        let mut challenge = authorization
            .challenge(kind.acme())
            .ok_or_else(|| OrderError::Failed(format!("the ACME server offers no {kind} challenge for {name}")))?;
        let key_authorization = challenge.key_authorization();
        match kind {
            ChallengeKind::Http01 => {
                answers.certs.add_http01(&challenge.token, key_authorization.as_str());
                answers.tokens.push(challenge.token.clone());
            }
            ChallengeKind::TlsAlpn01 => {
                let cert = alpn_certificate(name, key_authorization.digest().as_ref())?;
                answers.certs.add_alpn01(name, cert);
                answers.alpn_names.push(name.to_owned());
            }
        }
        challenge.set_ready().await.map_err(|e| explain(&format!("the {kind} challenge for {name}"), e))?;
    }
    Ok(())
}

/// The reason the CA gave for an invalid order: the failed challenge's error, which says
/// what it saw (a connection refused, a wrong answer), else `fallback`.
async fn why_invalid(order: &mut Order, kind: ChallengeKind, fallback: OrderError) -> OrderError {
    let mut authorizations = order.authorizations();
    while let Some(Ok(mut authorization)) = authorizations.next().await {
        let Ok(state) = authorization.refresh().await else { continue };
        let failed = state.challenges.iter().find(|c| c.r#type == kind.acme()).and_then(|c| c.error.as_ref());
        if let Some(problem) = failed {
            return OrderError::Failed(format!("the {kind} challenge failed: {}", problem_text(problem)));
        }
    }
    fallback
}

/// The self-signed certificate RFC 8737 asks for: the name, and the critical
/// `acmeIdentifier` extension holding the key authorization's SHA-256 digest.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Certificate, OrderError> {
    let failed = |err: &dyn std::fmt::Display| OrderError::Failed(format!("making the tls-alpn-01 certificate: {err}"));
    let key = rcgen::KeyPair::generate().map_err(|e| failed(&e))?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| failed(&e))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| failed(&e))?;
    Certificate::tls_alpn01(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).map_err(|e| failed(&e))
}

/// The challenge answers an order set up, removed from the ingress when dropped.
struct Answers<'a> {
    certs: &'a CertStore,
    tokens: Vec<String>,
    alpn_names: Vec<String>,
}

impl Drop for Answers<'_> {
    fn drop(&mut self) {
        for token in &self.tokens {
            self.certs.remove_http01(token);
        }
        for name in &self.alpn_names {
            self.certs.remove_alpn01(name);
        }
    }
}

impl ChallengeKind {
    fn acme(self) -> ChallengeType {
        match self {
            ChallengeKind::Http01 => ChallengeType::Http01,
            ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
        }
    }
}
