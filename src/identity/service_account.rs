//! Gateway-issued tokens for agents without an OIDC client: `agentgate token create` prints a
//! random token once; the config keeps only its SHA-256, compared in constant time.

use super::{AuthError, AuthMethod, Identity, Reason};
use crate::config::ServiceAccount;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// Prefix of gateway tokens: recognisable in a leak scan, never a JWT.
pub const TOKEN_PREFIX: &str = "agt_";

/// A fresh token: 32 random bytes from BoringSSL's CSPRNG.
pub fn generate_token() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    boring::rand::rand_bytes(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// SHA-256 of a token (or any bytes, e.g. a request body an approval is bound to), as hex.
pub fn sha256_hex(data: impl AsRef<[u8]>) -> String {
    crate::util::hex::hex(&boring::sha::sha256(data.as_ref()))
}

/// The account whose token this is. Every account is compared, in constant time, whatever
/// matches, so timing tells nothing about which hashes are close.
pub fn find<'a>(accounts: &'a [ServiceAccount], token: &str) -> Option<&'a ServiceAccount> {
    let hash = boring::sha::sha256(token.as_bytes());
    let mut found = None;
    for a in accounts {
        if boring::memcmp::eq(&hash, &a.token_sha256) {
            found = Some(a);
        }
    }
    found
}

pub fn identify(accounts: &[ServiceAccount], token: &str) -> Result<Identity, AuthError> {
    match find(accounts, token) {
        Some(a) => Ok(Identity {
            person: a
                .person
                .as_ref()
                .map(|(issuer, subject)| super::PersonName {
                    issuer: issuer.clone(),
                    subject: subject.clone(),
                }),
            subject: a.name.clone(),
            issuer: "service-account".into(),
            method: AuthMethod::ServiceAccount,
            groups: a.groups.clone(),
        }),
        None => Err(AuthError::new(
            Reason::UnknownServiceAccount,
            "the token is neither a JWT from an accepted issuer nor a known service-account token",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str, token: &str) -> ServiceAccount {
        let hex = sha256_hex(token);
        let mut h = [0u8; 32];
        for (i, b) in h.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        ServiceAccount {
            name: name.into(),
            token_sha256: h,
            groups: vec!["agents".into()],
            person: None,
        }
    }

    #[test]
    fn tokens_are_random_and_found_by_hash() {
        let t1 = generate_token().unwrap();
        let t2 = generate_token().unwrap();
        assert_ne!(t1, t2);
        assert!(t1.starts_with(TOKEN_PREFIX) && t1.len() == 4 + 43);
        let accounts = vec![account("a", &t1), account("b", &t2)];
        assert_eq!(find(&accounts, &t2).map(|a| a.name.as_str()), Some("b"));
        assert!(find(&accounts, "agt_wrong").is_none());
        assert!(find(&accounts, &t1[..t1.len() - 1]).is_none());
        let id = identify(&accounts, &t1).unwrap();
        assert_eq!(
            (id.subject.as_str(), id.method),
            ("a", AuthMethod::ServiceAccount)
        );
        assert_eq!(
            identify(&accounts, "nope").unwrap_err().reason,
            Reason::UnknownServiceAccount
        );
    }

    #[test]
    fn known_vector() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
