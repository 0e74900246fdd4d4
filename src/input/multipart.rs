//! `multipart/form-data` bodies (RFC 7578) as OPA-Envoy parses them: `{name: [values]}`, a
//! part's value its text, or its parsed JSON when the part's own content type contains
//! `application/json`. Parts without a form name are skipped; the preamble and epilogue are
//! ignored. The whole body is in memory already (Envoy buffered it), so this reads slices.

use std::collections::BTreeMap;

use regorus::Value;

use super::InputError;

/// The body's form fields, or `None` when the content type names no boundary (OPA-Envoy's
/// `null`). A body that is not well-formed multipart is `InputError::Multipart`.
pub fn parse(body: &[u8], content_type: &str) -> Result<Option<Value>, InputError> {
    let Some(boundary) = param(content_type, "boundary") else {
        return Ok(None);
    };
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(InputError::Multipart("the boundary is empty or too long"));
    }
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut fields: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    // From the first delimiter line on (the preamble before it is ignored).
    let mut rest = delimiter_lines(body, delimiter)
        .next()
        .and_then(|at| body.get(at + delimiter.len()..))
        .ok_or(InputError::Multipart("no boundary line in the body"))?;
    loop {
        if rest.starts_with(b"--") {
            return Ok(Some(into_value(fields)));
        }
        let part =
            skip_line_end(rest).ok_or(InputError::Multipart("a boundary line is malformed"))?;
        let (headers, content) = headers(part)?;
        // The part's content runs to the next delimiter line.
        let (content, after) = split_at_delimiter(content, delimiter)
            .ok_or(InputError::Multipart("a part is not closed by a boundary"))?;
        if let Some(name) = form_name(&headers) {
            let value = match headers.get("content-type") {
                Some(t) if t.to_ascii_lowercase().contains("application/json") => {
                    let v: serde_json::Value = serde_json::from_slice(content)
                        .map_err(|_| InputError::Multipart("a JSON part is not valid JSON"))?;
                    Value::from(v)
                }
                _ => Value::from(String::from_utf8_lossy(content).as_ref()),
            };
            fields.entry(name).or_default().push(value);
        }
        rest = after;
    }
}

fn into_value(fields: BTreeMap<String, Vec<Value>>) -> Value {
    Value::from(
        fields
            .into_iter()
            .map(|(k, v)| (Value::from(k), Value::from(v)))
            .collect::<BTreeMap<_, _>>(),
    )
}

/// A part's content up to the next delimiter line (without the line end before it), and what
/// follows that delimiter.
fn split_at_delimiter<'s>(s: &'s [u8], delimiter: &[u8]) -> Option<(&'s [u8], &'s [u8])> {
    let at = delimiter_lines(s, delimiter).find(|&i| i > 0)?;
    let (content, from_delimiter) = s.split_at_checked(at)?;
    let content = content.strip_suffix(b"\n")?;
    let content = content.strip_suffix(b"\r").unwrap_or(content);
    Some((content, from_delimiter.get(delimiter.len()..)?))
}

/// Starts of the lines of `s` that are delimiter lines: the delimiter at a line's start,
/// followed by `--` (the last) or by blanks and the line end. `--boundaryX` is content.
fn delimiter_lines<'s>(s: &'s [u8], delimiter: &'s [u8]) -> impl Iterator<Item = usize> + 's {
    let mut from = 0;
    std::iter::from_fn(move || {
        while let Some(found) = s.get(from..).and_then(|tail| find(tail, delimiter)) {
            let i = from + found;
            from = i + 1;
            let at_line_start = i == 0 || s.get(i - 1) == Some(&b'\n');
            let after = s.get(i + delimiter.len()..).unwrap_or_default();
            if at_line_start && (after.starts_with(b"--") || skip_line_end(after).is_some()) {
                return Some(i);
            }
        }
        None
    })
}

/// After a delimiter: optional spaces or tabs, then the line end; what follows it.
fn skip_line_end(s: &[u8]) -> Option<&[u8]> {
    let blanks = s.iter().take_while(|b| **b == b' ' || **b == b'\t').count();
    let s = s.get(blanks..)?;
    s.strip_prefix(b"\r\n").or_else(|| s.strip_prefix(b"\n"))
}

/// A part's header lines, names lower-cased, up to the blank line; and the content after it.
fn headers(mut s: &[u8]) -> Result<(BTreeMap<String, String>, &[u8]), InputError> {
    let mut out = BTreeMap::new();
    loop {
        let line_end = s
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(InputError::Multipart("a part's headers do not end"))?;
        let (line, after) = s
            .split_at_checked(line_end)
            .ok_or(InputError::Multipart("a part's headers do not end"))?;
        s = after.get(1..).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Ok((out, s));
        }
        let line = std::str::from_utf8(line)
            .map_err(|_| InputError::Multipart("a part's header is not UTF-8"))?;
        let (name, value) = line
            .split_once(':')
            .ok_or(InputError::Multipart("a part's header has no colon"))?;
        out.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
    }
}

/// The `name` of a `Content-Disposition: form-data` part.
fn form_name(headers: &BTreeMap<String, String>) -> Option<String> {
    let disposition = headers.get("content-disposition")?;
    let kind = disposition.split(';').next()?.trim();
    if !kind.eq_ignore_ascii_case("form-data") {
        return None;
    }
    param(disposition, "name").filter(|n| !n.is_empty())
}

/// A parameter of a header value (`type/subtype; key=value; key="quoted \"value\""`).
fn param(header: &str, key: &str) -> Option<String> {
    let mut rest = header.split_once(';')?.1;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return None;
        }
        let (name, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => value.extend(chars.next().map(|(_, c)| c)),
                        '"' => {
                            end = Some(i + 1);
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, quoted.get(end?..)?)
            }
            None => {
                let (value, next) = after.split_at(after.find(';').unwrap_or(after.len()));
                (value.trim_end().to_string(), next)
            }
        };
        if name.trim().eq_ignore_ascii_case(key) {
            return Some(value);
        }
        rest = next;
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parsed(body: &str, content_type: &str) -> serde_json::Value {
        let v = parse(body.as_bytes(), content_type)
            .expect("parses")
            .expect("has a boundary");
        serde_json::to_value(v).expect("json")
    }

    #[test]
    fn fields_text_and_json_in_order() {
        let body = "preamble\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"passenger\"\r\n\r\n\
            alice\r\n--XyZ\r\n\
            content-disposition: form-data; name=passenger\r\n\r\n\
            bob\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"booking\"\r\n\
            Content-Type: application/json; charset=utf-8\r\n\r\n\
            {\"price\": 120}\r\n--XyZ\r\n\
            Content-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\r\n\
            line one\r\nline two\r\n--XyZ\r\n\
            Content-Disposition: attachment; name=\"skipped\"\r\n\r\n\
            x\r\n--XyZ--\r\nepilogue";
        assert_eq!(
            parsed(body, "multipart/form-data; boundary=XyZ"),
            json!({
                "passenger": ["alice", "bob"],
                "booking": [{"price": 120}],
                "file": ["line one\r\nline two"],
            })
        );
    }

    #[test]
    fn quoted_boundaries_and_bare_line_feeds() {
        let body = "--a b\nContent-Disposition: form-data; name=\"k\"\n\nv\n--a b--\n";
        assert_eq!(
            parsed(body, "multipart/form-data; boundary=\"a b\""),
            json!({"k": ["v"]})
        );
    }

    #[test]
    fn no_boundary_is_null_and_malformed_bodies_are_errors() {
        assert_eq!(
            parse(b"--x\r\n", "multipart/form-data").map(|v| v.is_none()),
            Ok(true)
        );
        let bad = |body: &str| parse(body.as_bytes(), "multipart/form-data; boundary=x");
        for body in [
            "no delimiter at all",
            "--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nnever closed",
            "--x\r\nContent-Disposition: form-data; name=\"a\"",
            "--x\r\nno colon here\r\n\r\nv\r\n--x--",
            "--x\r\nContent-Type: application/json\r\nContent-Disposition: form-data; name=\"j\"\r\n\r\n{nope\r\n--x--",
        ] {
            assert!(
                matches!(bad(body), Err(InputError::Multipart(_))),
                "{body:?}"
            );
        }
        // Only a closing delimiter (`--xtrailing` is preamble, not a delimiter): no fields.
        for body in ["--x--", "--xtrailing\r\n\r\nv\r\n--x--"] {
            assert_eq!(
                bad(body).map(|v| serde_json::to_value(v).ok()),
                Ok(Some(json!({}))),
                "{body:?}"
            );
        }
    }
}
