//! Identity from a client certificate that the listener's `client_ca` verified during the
//! handshake. The handshake hook records the certificate's names on the connection; a request
//! maps them to groups with `identity.client_certs`.

use super::{AuthError, AuthMethod, Identity, Reason};
use crate::config::{CertMatcher, ClientCertRule};
use crate::tls::CertNames;
use async_trait::async_trait;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use std::any::Any;
use std::sync::Arc;

/// Listener callbacks: after a handshake, keep the verified peer certificate's names.
pub struct RecordClientCert;

#[async_trait]
impl TlsAccept for RecordClientCert {
    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        // With `client_ca` the handshake fails unless a presented certificate verifies, so a
        // certificate present here is a verified one.
        let cert = ssl.peer_certificate()?;
        Some(Arc::new(crate::tls::cert_names(&cert)) as Arc<dyn Any + Send + Sync>)
    }
}

fn matches(m: &CertMatcher, n: &CertNames) -> bool {
    match m {
        CertMatcher::SubjectCn(cn) => n.subject_cn.as_deref() == Some(cn.as_str()),
        CertMatcher::SanDns(d) => n.san_dns.iter().any(|x| x.eq_ignore_ascii_case(d)),
        CertMatcher::SanUri(u) => n.san_uri.iter().any(|x| x == u),
        CertMatcher::SanEmail(e) => n.san_email.iter().any(|x| x.eq_ignore_ascii_case(e)),
    }
}

fn subject(m: &CertMatcher) -> &str {
    match m {
        CertMatcher::SubjectCn(s)
        | CertMatcher::SanDns(s)
        | CertMatcher::SanUri(s)
        | CertMatcher::SanEmail(s) => s,
    }
}

/// The identity of a verified certificate: the union of the groups of every rule it matches.
pub fn identify(rules: &[ClientCertRule], names: &CertNames) -> Result<Identity, AuthError> {
    let mut hit: Option<Identity> = None;
    for r in rules.iter().filter(|r| matches(&r.matcher, names)) {
        let id = hit.get_or_insert_with(|| Identity {
            person: None,
            subject: subject(&r.matcher).to_string(),
            issuer: "client-cert".into(),
            method: AuthMethod::ClientCert,
            groups: Vec::new(),
        });
        for g in &r.groups {
            if !id.groups.contains(g) {
                id.groups.push(g.clone());
            }
        }
    }
    hit.ok_or_else(|| {
        AuthError::new(
            Reason::ClientCertUnmapped,
            format!(
                "the client certificate (CN={}) is valid but identity.client_certs maps it to no identity",
                names.subject_cn.as_deref().unwrap_or("none")
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(m: CertMatcher, g: &[&str]) -> ClientCertRule {
        ClientCertRule {
            matcher: m,
            groups: g.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn mapping_table() {
        let rules = vec![
            rule(CertMatcher::SubjectCn("build-bot".into()), &["agents"]),
            rule(
                CertMatcher::SanUri("spiffe://corp/agent/a".into()),
                &["spiffe"],
            ),
            rule(CertMatcher::SanDns("bot.corp".into()), &["agents", "dns"]),
            rule(CertMatcher::SanEmail("ops@corp".into()), &["ops"]),
        ];
        let names = |cn: Option<&str>, dns: &[&str], uri: &[&str], email: &[&str]| CertNames {
            subject_cn: cn.map(str::to_string),
            san_dns: dns.iter().map(|s| s.to_string()).collect(),
            san_uri: uri.iter().map(|s| s.to_string()).collect(),
            san_email: email.iter().map(|s| s.to_string()).collect(),
        };
        let table: Vec<(CertNames, Option<Vec<&str>>)> = vec![
            (
                names(Some("build-bot"), &[], &[], &[]),
                Some(vec!["agents"]),
            ),
            (names(Some("build-bot2"), &[], &[], &[]), None),
            (
                names(None, &[], &["spiffe://corp/agent/a"], &[]),
                Some(vec!["spiffe"]),
            ),
            (
                names(Some("build-bot"), &["BOT.corp"], &[], &[]),
                Some(vec!["agents", "dns"]),
            ),
            (names(None, &[], &[], &["OPS@corp"]), Some(vec!["ops"])),
            (names(None, &[], &["spiffe://corp/agent/ab"], &[]), None),
        ];
        for (n, want) in table {
            let got = identify(&rules, &n);
            match want {
                Some(g) => assert_eq!(got.unwrap().groups, g, "{n:?}"),
                None => assert_eq!(got.unwrap_err().reason, Reason::ClientCertUnmapped, "{n:?}"),
            }
        }
    }
}
