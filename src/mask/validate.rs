//! Validators that turn a pattern hit into a finding: checksums (Luhn, IBAN mod-97), number
//! ranges (SSN, ITIN, IPs), digit counts (phones), lengths and entropy (vendor tokens, generic
//! secrets), and the credentials vendors publish in their documentation (left alone, as gitleaks
//! leaves them). Pure functions.

use std::net::{Ipv4Addr, Ipv6Addr};

/// Luhn checksum over the digits of `s` (separators ignored).
pub fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() < 2 {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// A payment card number: 13-19 digits, a known issuer prefix, and the Luhn checksum.
pub fn card(s: &str) -> bool {
    // Separated numbers must be grouped the way cards are printed (4-4-4-4, 4-6-5...), which
    // keeps UUID fragments and dates out.
    let groups: Vec<usize> = s.split([' ', '-']).map(str::len).collect();
    let printed = groups.len() == 1
        || (s.contains(' ') != s.contains('-')
            && matches!(
                groups[..],
                [4, 4, 4, 4] | [4, 4, 4, 4, 3] | [4, 6, 5] | [4, 6, 4] | [4, 4, 4, 1..=4]
            ));
    if !printed {
        return false;
    }
    let digits: String = s.chars().filter(char::is_ascii_digit).collect();
    if !(13..=19).contains(&digits.len()) || digits.bytes().all(|b| b == digits.as_bytes()[0]) {
        return false;
    }
    let p2: u32 = digits[..2].parse().unwrap_or(0);
    let p4: u32 = digits[..4].parse().unwrap_or(0);
    let issuer = digits.starts_with('4')                       // Visa
        || (51..=55).contains(&p2) || (2221..=2720).contains(&p4) // Mastercard
        || p2 == 34 || p2 == 37                               // Amex
        || digits.starts_with("6011") || p2 == 65 || digits.starts_with("62") // Discover, UnionPay
        || (3528..=3589).contains(&p4)                        // JCB
        || p2 == 36 || p2 == 38 || (300..=305).contains(&(p4 / 10)); // Diners
    issuer && luhn(&digits)
}

/// IBAN lengths by country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BI", 27),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DJ", 27),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FK", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HN", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("LY", 25),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MN", 20),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NI", 28),
    ("NL", 18),
    ("NO", 15),
    ("OM", 23),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("RU", 33),
    ("SA", 24),
    ("SC", 31),
    ("SD", 18),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("SO", 23),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
    ("YE", 30),
];

/// An IBAN: the country's length and the ISO 7064 mod-97 check.
pub fn iban(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    let Some(&(_, len)) = IBAN_LENGTHS.iter().find(|(cc, _)| compact.starts_with(cc)) else {
        return false;
    };
    if compact.len() != len {
        return false;
    }
    let rearranged = compact[4..].chars().chain(compact[..4].chars());
    let mut rem: u32 = 0;
    for c in rearranged {
        let v = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// A US Social Security number `AAA-GG-SSSS` outside the never-issued ranges
/// (area 000, 666, 900-999; group 00; serial 0000) and the well-known fake ones.
pub fn ssn(s: &str) -> bool {
    let d: Vec<&str> = s.split('-').collect();
    let [a, g, n] = d[..] else { return false };
    let (Ok(area), Ok(group), Ok(serial)) = (a.parse::<u32>(), g.parse::<u32>(), n.parse::<u32>())
    else {
        return false;
    };
    let fake = ["078-05-1120", "219-09-9999", "123-45-6789"].contains(&s);
    area != 0 && area != 666 && area < 900 && group != 0 && serial != 0 && !fake
}

/// The nine digits of an SSN-shaped number written `AAA-GG-SSSS`, `AAA GG SSSS` or `AAAGGSSSS`
/// (one separator throughout), or `None`.
fn nine_digits(s: &str) -> Option<[u8; 9]> {
    let b = s.as_bytes();
    let digits: Vec<u8> = b.iter().copied().filter(u8::is_ascii_digit).collect();
    let seps: Vec<u8> = b.iter().copied().filter(|c| !c.is_ascii_digit()).collect();
    let shaped = match seps[..] {
        [] => true,
        [x, y] => {
            x == y && (x == b'-' || x == b' ') && b.get(3) == Some(&x) && b.get(6) == Some(&x)
        }
        _ => false,
    };
    (shaped && digits.len() == 9).then(|| std::array::from_fn(|i| digits[i] - b'0'))
}

/// A number the text calls an SSN, TIN or ITIN: any area (900-999, 000 and 666 included: tax IDs
/// live there, and so does the synthetic identity data prompts carry), nine digits in one of the
/// three printed forms.
pub fn ssn_in_context(s: &str) -> bool {
    nine_digits(s).is_some()
}

/// An IRS Individual Taxpayer Identification Number: `9XX-GG-XXXX`, the group GG in 50-65,
/// 70-88, 90-92 or 94-99.
pub fn itin(s: &str) -> bool {
    let Some(d) = nine_digits(s) else {
        return false;
    };
    let group = d[3] * 10 + d[4];
    d[0] == 9 && matches!(group, 50..=65 | 70..=88 | 90..=92 | 94..=99)
}

/// Credentials vendors print in their documentation, which scanners leave alone (gitleaks'
/// allowlists): AWS's `AKIAIOSFODNN7EXAMPLE` / `wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY` and every
/// value ending the same way, and jwt.io's sample token (HS256, key `your-256-bit-secret`).
pub fn documented_example(s: &str) -> bool {
    const DOCUMENTED: &[&str] = &[
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    ];
    let suffixed = ["EXAMPLE", "EXAMPLEKEY"]
        .iter()
        .any(|x| s.len() > x.len() && s.ends_with(x));
    suffixed || DOCUMENTED.contains(&s)
}

/// An AWS access key id that is not the documentation's.
pub fn aws_key_id(s: &str) -> bool {
    !documented_example(s)
}

/// A JWT that is not jwt.io's sample.
pub fn jwt(s: &str) -> bool {
    !documented_example(s)
}

/// Exactly `len` bytes, all of `class`, random enough, not a documented example.
fn token(s: &str, len: usize, class: fn(u8) -> bool, min_entropy: f64) -> bool {
    s.len() == len && s.bytes().all(class) && entropy(s) >= min_entropy && !documented_example(s)
}

fn base64_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'+' || b == b'/'
}

/// An Azure storage account key: 64 random bytes in base64 (86 characters and `==`).
pub fn azure_storage_key(s: &str) -> bool {
    s.strip_suffix("==")
        .is_some_and(|body| token(body, 86, base64_byte, 4.5))
}

/// An Azure AD (Entra ID) client secret: 3 characters, a digit, `Q~`, then 31-34 characters
/// (40 at most in all, as Microsoft issues them).
pub fn azure_client_secret(s: &str) -> bool {
    let class = |b: u8| b.is_ascii_alphanumeric() || b"_~.-".contains(&b);
    (37..=40).contains(&s.len())
        && s.get(4..6) == Some("Q~")
        && s.bytes().all(class)
        && entropy(s) >= 3.5
}

/// A GCP service account's `private_key_id`: 40 lowercase hex digits.
pub fn gcp_key_id(s: &str) -> bool {
    token(
        s,
        40,
        |b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        3.0,
    )
}

/// A Hugging Face token: `hf_` (or the older `api_org_`) and 34 letters.
pub fn huggingface_token(s: &str) -> bool {
    let rest = s.strip_prefix("hf_").or_else(|| s.strip_prefix("api_org_"));
    rest.is_some_and(|r| token(r, 34, |b| b.is_ascii_alphabetic(), 3.5))
}

/// An npm access token: `npm_` and 36 letters and digits.
pub fn npm_token(s: &str) -> bool {
    s.strip_prefix("npm_")
        .is_some_and(|r| token(r, 36, |b| b.is_ascii_alphanumeric(), 3.5))
}

/// A PyPI API token: `pypi-` and a macaroon of at least 50 base64url bytes after its fixed
/// `pypi.org` head.
pub fn pypi_token(s: &str) -> bool {
    s.len() >= "pypi-AgEIcHlwaS5vcmc".len() + 50 && entropy(s) >= 4.0 && !documented_example(s)
}

/// A Twilio API key (`SK`) or account SID (`AC`): 32 hex digits, one case.
pub fn twilio_sid(s: &str) -> bool {
    let hex = &s[2.min(s.len())..];
    let lower = hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let upper = hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    s.len() == 34 && (lower || upper) && entropy(hex) >= 3.0
}

/// A SendGrid API key: `SG.`, 22 characters, `.`, 43 characters (base64url).
pub fn sendgrid_key(s: &str) -> bool {
    let b64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    let mut parts = s.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next()),
        (Some("SG"), Some(id), Some(secret), None)
            if id.len() == 22 && secret.len() == 43 && id.bytes().all(b64url) && secret.bytes().all(b64url)
    ) && entropy(s) >= 4.0
}

/// A phone number: 8 to 15 digits in all (E.164), not all the same digit.
pub fn phone(s: &str) -> bool {
    let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_digit).collect();
    (8..=15).contains(&digits.len()) && !digits.iter().all(|&d| d == digits[0])
}

/// An IPv4 address that can identify a host (not 0.0.0.0, loopback or broadcast).
pub fn ipv4(s: &str) -> bool {
    match s.parse::<Ipv4Addr>() {
        Ok(ip) => !(ip.is_unspecified() || ip.is_loopback() || ip.is_broadcast()),
        Err(_) => false,
    }
}

/// An IPv6 address with at least three groups and a digit (so `a::b` in code is not one).
pub fn ipv6(s: &str) -> bool {
    let groups = s.split(':').filter(|g| !g.is_empty()).count();
    groups >= 3
        && s.bytes().any(|b| b.is_ascii_digit())
        && s.parse::<Ipv6Addr>()
            .is_ok_and(|ip| !(ip.is_loopback() || ip.is_unspecified()))
}

/// Shannon entropy in bits per character.
pub fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[b as usize] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// A credential-looking value: random enough, with letters and digits, and not a template
/// (`${VAR}`, `<your-key>`, `xxxx`, `****`).
pub fn high_entropy_secret(s: &str) -> bool {
    let templated = s.contains("${") || s.starts_with('<') || s.starts_with('{');
    let has_digit = s.bytes().any(|b| b.is_ascii_digit());
    let has_alpha = s.bytes().any(|b| b.is_ascii_alphabetic());
    !templated && has_digit && has_alpha && entropy(s) >= 3.0 && !documented_example(s)
}

/// An API key with a vendor prefix: the random part must not be a run of one character or an
/// obvious example (`sk-xxxxxxxx...`).
pub fn vendor_key(s: &str) -> bool {
    entropy(s) >= 3.0 && !documented_example(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cards() {
        for ok in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "378282246310005",
            "6011111111111117",
            "3530111333300000",
        ] {
            assert!(card(ok), "{ok}");
        }
        for bad in [
            "4111111111111112",
            "1234567812345678",
            "41111111-1111-1111",
            "4111 1111-1111 1111",
            "0000000000000000",
            "4111 1111",
            "9111111111111111",
        ] {
            assert!(!card(bad), "{bad}");
        }
    }

    #[test]
    fn ibans() {
        for ok in [
            "DE89370400440532013000",
            "GB82 WEST 1234 5698 7654 32",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
        ] {
            assert!(iban(ok), "{ok}");
        }
        for bad in [
            "DE89370400440532013001",
            "DE8937040044053201300",
            "XX89370400440532013000",
            "GB82WEST123456987654",
        ] {
            assert!(!iban(bad), "{bad}");
        }
    }

    #[test]
    fn ssns() {
        assert!(ssn("536-22-1234"));
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-12-3456",
            "536-00-1234",
            "536-22-0000",
            "078-05-1120",
            "123-45-6789",
        ] {
            assert!(!ssn(bad), "{bad}");
        }
    }

    #[test]
    fn phones_ips_entropy() {
        assert!(
            phone("+14155552671")
                && phone("(415) 555-2671")
                && !phone("+1111111111")
                && !phone("12345")
        );
        assert!(
            ipv4("203.0.113.7")
                && ipv4("10.1.2.3")
                && !ipv4("127.0.0.1")
                && !ipv4("0.0.0.0")
                && !ipv4("256.1.1.1")
        );
        assert!(
            ipv6("2001:db8::1")
                && ipv6("fe80::1ff:fe23:4567:890a")
                && !ipv6("::1")
                && !ipv6("a::b")
                && !ipv6("dead::beef")
        );
        assert!(
            high_entropy_secret("Zx9!qR2#mK7$")
                && high_entropy_secret("password123")
                && !high_entropy_secret("changeme")
                && !high_entropy_secret("${DB_PASSWORD}")
        );
        assert!(
            vendor_key("sk-proj-Ab3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI")
                && !vendor_key("sk-xxxxxxxxxxxxxxxxxxxxxxxxxxxx")
        );
    }
}
