//! Validators that turn a pattern hit into a finding: checksums (Luhn, IBAN mod-97), number
//! ranges (SSN, IPs), digit counts (phones) and entropy (generic secrets). Pure functions.

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
    ("BR", 29),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("SA", 24),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VG", 24),
    ("XK", 20),
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
    !templated && has_digit && has_alpha && entropy(s) >= 3.0
}

/// An API key with a vendor prefix: the random part must not be a run of one character or an
/// obvious example (`sk-xxxxxxxx...`).
pub fn vendor_key(s: &str) -> bool {
    entropy(s) >= 3.0
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
