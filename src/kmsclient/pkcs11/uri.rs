//! `pkcs11:` URIs (RFC 7512), parsed strictly: which module, which
//! token, which key, and where the PIN comes from.
//!
//! Owns: the URI grammar sealfs accepts (attributes listed in the parent
//! module's docs), percent-decoding and -encoding, and the canonical form
//! `Display` writes (with `pin-value` redacted).
//! Must never: load a module or read a PIN (the parent does both).

use std::fmt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::PinSource;

/// A parsed `pkcs11:` URI naming a token, a key and how to reach them.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token=`: the token label.
    pub token: Option<String>,
    /// `manufacturer=`: the token manufacturer.
    pub manufacturer: Option<String>,
    /// `model=`: the token model.
    pub model: Option<String>,
    /// `serial=`: the token serial number.
    pub serial: Option<String>,
    /// `slot-id=`: the slot number.
    pub slot_id: Option<u64>,
    /// `object=`: the key label (`CKA_LABEL`).
    pub object: Option<String>,
    /// `id=`: the key id (`CKA_ID`), raw bytes.
    pub id: Option<Vec<u8>>,
    /// `module-path=`: the PKCS#11 module to load.
    pub module_path: Option<PathBuf>,
    /// `pin-source=` or `pin-value=`.
    pub pin: Option<PinSource>,
}

/// Why a `pkcs11:` URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UriError {
    /// It does not start with `pkcs11:`.
    #[error("not a PKCS#11 URI: it must start with \"pkcs11:\"")]
    Scheme,
    /// An attribute sealfs does not know or support.
    #[error("unsupported attribute {0:?} in the PKCS#11 URI; use token, manufacturer, model, serial, slot-id, object, id, type, module-path, pin-source or pin-value")]
    UnknownAttribute(String),
    /// The same attribute twice.
    #[error("attribute {0:?} appears twice in the PKCS#11 URI; keep one")]
    Duplicate(String),
    /// `name=value` expected.
    #[error("malformed PKCS#11 URI component {0:?}: expected name=value")]
    Malformed(String),
    /// A `%` escape that is not `%XX` hex.
    #[error("bad percent-encoding in PKCS#11 URI attribute {0:?}: use %XX with two hex digits")]
    Percent(String),
    /// A text attribute that is not UTF-8 once decoded.
    #[error("PKCS#11 URI attribute {0:?} is not UTF-8 text once decoded")]
    Utf8(String),
    /// A value that is wrong for its attribute.
    #[error("PKCS#11 URI attribute {attr:?}: {reason}")]
    BadValue {
        /// The attribute.
        attr: String,
        /// What is wrong.
        reason: &'static str,
    },
}

fn percent_decode(attr: &str, raw: &str) -> Result<Vec<u8>, UriError> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(UriError::Percent(attr.into()))?;
            let s = std::str::from_utf8(hex).map_err(|_| UriError::Percent(attr.into()))?;
            if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(UriError::Percent(attr.into()));
            }
            out.push(u8::from_str_radix(s, 16).map_err(|_| UriError::Percent(attr.into()))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &c in bytes {
        if c.is_ascii_alphanumeric() || b"-._~:[]@!$'()*+,/".contains(&c) {
            out.push(c as char);
        } else {
            out.push_str(&format!("%{c:02X}"));
        }
    }
    out
}

const PATH_ATTRS: &[&str] = &[
    "token",
    "manufacturer",
    "model",
    "serial",
    "slot-id",
    "object",
    "id",
    "type",
];
const QUERY_ATTRS: &[&str] = &["module-path", "pin-source", "pin-value"];

impl std::str::FromStr for Pkcs11Uri {
    type Err = UriError;

    fn from_str(s: &str) -> Result<Self, UriError> {
        let rest = s.strip_prefix("pkcs11:").ok_or(UriError::Scheme)?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Pkcs11Uri::default();
        let mut seen: Vec<String> = Vec::new();
        let path_parts = path.split(';').filter(|p| !p.is_empty());
        let query_parts = query.into_iter().flat_map(|q| q.split('&'));
        for (is_query, part) in path_parts
            .map(|p| (false, p))
            .chain(query_parts.map(|p| (true, p)))
        {
            let (name, raw) = part
                .split_once('=')
                .ok_or_else(|| UriError::Malformed(part.into()))?;
            if name.is_empty() {
                return Err(UriError::Malformed(part.into()));
            }
            if seen.iter().any(|n| n == name) {
                return Err(UriError::Duplicate(name.into()));
            }
            seen.push(name.into());
            let known = if is_query { QUERY_ATTRS } else { PATH_ATTRS };
            if !known.contains(&name) {
                return Err(UriError::UnknownAttribute(name.into()));
            }
            let bytes = Zeroizing::new(percent_decode(name, raw)?);
            let text = || {
                std::str::from_utf8(&bytes)
                    .map(str::to_owned)
                    .map_err(|_| UriError::Utf8(name.into()))
            };
            let bad = |reason| UriError::BadValue {
                attr: name.into(),
                reason,
            };
            match name {
                "token" => uri.token = Some(text()?),
                "manufacturer" => uri.manufacturer = Some(text()?),
                "model" => uri.model = Some(text()?),
                "serial" => uri.serial = Some(text()?),
                "object" => uri.object = Some(text()?),
                "id" => uri.id = Some(bytes.to_vec()),
                "slot-id" => {
                    let n = text()?.parse();
                    uri.slot_id = Some(n.map_err(|_| bad("must be a decimal slot number"))?);
                }
                "type" if text()? != "secret-key" => {
                    return Err(bad(
                        "only type=secret-key is supported (an AES key seals the KEK)",
                    ))
                }
                "type" => {}
                "module-path" => {
                    let p = PathBuf::from(text()?);
                    if !p.is_absolute() {
                        return Err(bad("must be an absolute path to the module (.so)"));
                    }
                    uri.module_path = Some(p);
                }
                "pin-source" | "pin-value" if uri.pin.is_some() => {
                    return Err(bad("give either pin-source or pin-value, not both"))
                }
                "pin-value" => uri.pin = Some(PinSource::Value(Zeroizing::new(text()?))),
                "pin-source" => uri.pin = Some(parse_pin_source(&Zeroizing::new(text()?))?),
                _ => unreachable!("filtered above"),
            }
        }
        Ok(uri)
    }
}

fn parse_pin_source(v: &str) -> Result<PinSource, UriError> {
    let bad = |reason| UriError::BadValue {
        attr: "pin-source".into(),
        reason,
    };
    if let Some(var) = v.strip_prefix("env:") {
        if var.is_empty() || var.contains('=') {
            return Err(bad("env:NAME needs a variable name"));
        }
        return Ok(PinSource::Env(var.into()));
    }
    let path = v
        .strip_prefix("file://")
        .or_else(|| v.strip_prefix("file:"))
        .unwrap_or(v);
    if !path.starts_with('/') {
        return Err(bad(
            "must be an absolute file path, a file: URI or env:NAME",
        ));
    }
    Ok(PinSource::File(path.into()))
}

impl fmt::Display for Pkcs11Uri {
    /// The canonical URI, with `pin-value` shown as `<redacted>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let os = |p: &Path| percent_encode(p.as_os_str().as_encoded_bytes());
        let text = [
            ("token", &self.token),
            ("manufacturer", &self.manufacturer),
            ("model", &self.model),
            ("serial", &self.serial),
            ("object", &self.object),
        ];
        let mut path: Vec<String> = text
            .iter()
            .filter_map(|(n, v)| {
                v.as_ref()
                    .map(|v| format!("{n}={}", percent_encode(v.as_bytes())))
            })
            .collect();
        path.extend(self.slot_id.map(|n| format!("slot-id={n}")));
        path.extend(
            self.id
                .as_ref()
                .map(|id| format!("id={}", percent_encode(id))),
        );
        path.push("type=secret-key".into());
        let mut query: Vec<String> = Vec::new();
        query.extend(
            self.module_path
                .as_ref()
                .map(|p| format!("module-path={}", os(p))),
        );
        query.extend(self.pin.as_ref().map(|pin| match pin {
            PinSource::File(p) => format!("pin-source={}", os(p)),
            PinSource::Env(n) => format!("pin-source=env:{}", percent_encode(n.as_bytes())),
            PinSource::Value(_) => "pin-value=<redacted>".into(),
        }));
        write!(f, "pkcs11:{}", path.join(";"))?;
        if !query.is_empty() {
            write!(f, "?{}", query.join("&"))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pkcs11Uri({self})")
    }
}

impl Pkcs11Uri {
    /// The URI's token attributes alone, for messages.
    pub(super) fn token_selector(&self) -> String {
        let only_token = Pkcs11Uri {
            object: None,
            id: None,
            module_path: None,
            pin: None,
            ..self.clone()
        };
        only_token.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Pkcs11Uri, UriError> {
        s.parse()
    }

    #[test]
    fn parses_full_uri_with_percent_decoding() {
        let u = parse(
            "pkcs11:token=My%20Token;object=sealfs%2Fkek;id=%01%02%ff;type=secret-key\
             ?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/run/pin%20file",
        )
        .unwrap();
        assert_eq!(u.token.as_deref(), Some("My Token"));
        assert_eq!(u.object.as_deref(), Some("sealfs/kek"));
        assert_eq!(u.id.as_deref(), Some(&[1u8, 2, 0xff][..]));
        assert_eq!(
            u.module_path.as_deref(),
            Some(Path::new("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(u.pin, Some(PinSource::File("/run/pin file".into())));
        // Round trip through Display.
        assert_eq!(parse(&u.to_string()).unwrap(), u);
    }

    #[test]
    fn pin_sources() {
        let u = parse("pkcs11:token=t?pin-source=file:///etc/pin").unwrap();
        assert_eq!(u.pin, Some(PinSource::File("/etc/pin".into())));
        let u = parse("pkcs11:token=t?pin-source=env:TOKEN_PIN").unwrap();
        assert_eq!(u.pin, Some(PinSource::Env("TOKEN_PIN".into())));
        let u = parse("pkcs11:token=t?pin-value=12%2034").unwrap();
        assert_eq!(&*u.pin.clone().unwrap().resolve().unwrap(), "12 34");
        assert!(!u.to_string().contains("12"));
        assert!(!format!("{u:?}").contains("12%2034"));
        assert!(matches!(
            parse("pkcs11:token=t?pin-source=relative/pin"),
            Err(UriError::BadValue { .. })
        ));
        assert!(matches!(
            parse("pkcs11:token=t?pin-source=/a&pin-value=1"),
            Err(UriError::BadValue { .. })
        ));
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        assert_eq!(parse("pkcs12:token=t"), Err(UriError::Scheme));
        assert_eq!(
            parse("pkcs11:token=t;library-version=1"),
            Err(UriError::UnknownAttribute("library-version".into()))
        );
        assert_eq!(
            parse("pkcs11:token=t?module-name=softhsm2"),
            Err(UriError::UnknownAttribute("module-name".into()))
        );
        // A query attribute in the path is refused too.
        assert_eq!(
            parse("pkcs11:token=t;pin-value=1"),
            Err(UriError::UnknownAttribute("pin-value".into()))
        );
        assert_eq!(
            parse("pkcs11:token=a;token=b"),
            Err(UriError::Duplicate("token".into()))
        );
        assert_eq!(
            parse("pkcs11:token"),
            Err(UriError::Malformed("token".into()))
        );
        assert_eq!(parse("pkcs11:=x"), Err(UriError::Malformed("=x".into())));
        assert_eq!(
            parse("pkcs11:token=%4"),
            Err(UriError::Percent("token".into()))
        );
        assert_eq!(
            parse("pkcs11:token=%zz"),
            Err(UriError::Percent("token".into()))
        );
        assert_eq!(
            parse("pkcs11:token=%ff"),
            Err(UriError::Utf8("token".into()))
        );
        assert!(matches!(
            parse("pkcs11:type=private-key"),
            Err(UriError::BadValue { .. })
        ));
        assert!(matches!(
            parse("pkcs11:slot-id=x"),
            Err(UriError::BadValue { .. })
        ));
        assert!(matches!(
            parse("pkcs11:token=t?module-path=libsofthsm2.so"),
            Err(UriError::BadValue { .. })
        ));
    }

    #[test]
    fn empty_and_minimal() {
        assert_eq!(parse("pkcs11:").unwrap(), Pkcs11Uri::default());
        let u = parse("pkcs11:slot-id=7;object=k").unwrap();
        assert_eq!(u.slot_id, Some(7));
        assert_eq!(u.object.as_deref(), Some("k"));
    }
}
