//! `multipart/form-data` bodies (RFC 7578) as OPA-Envoy parses them: `{name: [values]}`, a
//! part's value its text, or its parsed JSON when the part's own `Content-Type` contains
//! `application/json`. Parts without a form name are skipped; the preamble and epilogue are
//! ignored. The whole body is in memory already (Envoy buffered it), so this reads slices.
//!
//! The upstream parses the same bytes again, perhaps differently: a body that two parsers could
//! read as different forms would let a policy judge fields the upstream never sees. So every
//! construct where parsers are known to disagree is refused (a 400) rather than guessed: a line
//! that starts with the boundary but is not a boundary line (RFC 2046 forbids the boundary
//! inside a part), line endings that change between boundary lines, folded or repeated part
//! headers, a `Content-Transfer-Encoding` other than `7bit`/`8bit`/`binary`, and media-type
//! parameters that are repeated, malformed or in RFC 2231's `name*=` form.

use std::collections::BTreeMap;

use regorus::Value;

use super::InputError;

type Result<T> = std::result::Result<T, InputError>;

fn malformed(what: &'static str) -> InputError {
    InputError::Multipart(what)
}

/// The body's form fields, or `None` when the content type names no boundary (OPA-Envoy's
/// `null`). A body that is not well-formed multipart is `InputError::Multipart`.
pub fn parse(body: &[u8], content_type: &str) -> Result<Option<Value>> {
    let params = media_params(content_type)?;
    let Some(boundary) = params.get("boundary") else {
        return Ok(None);
    };
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(malformed(
            "the boundary is empty or longer than 70 characters",
        ));
    }
    let delimiter = format!("--{boundary}");
    let lines = boundary_lines(body, delimiter.as_bytes())?;
    let mut fields: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for pair in lines.windows(2) {
        let [open, next] = pair else { continue };
        let part = body
            .get(open.end..next.start)
            .ok_or(malformed("a part is out of order"))?;
        let (headers, content) = headers(part)?;
        // The line end before the next boundary line belongs to that line. Nothing is left
        // when the boundary came right after the headers' blank line (an empty part).
        let content = match content.is_empty() {
            true => content,
            false => content
                .strip_suffix(open.ending.as_bytes())
                .ok_or(malformed("a part does not end with a line end"))?,
        };
        let Some(name) = form_name(&headers)? else {
            continue;
        };
        let value = match headers.get("content-type") {
            // As Go's multipart reader sees it: the header as written, letter case included.
            Some(t) if t.contains("application/json") => {
                let v: serde_json::Value = serde_json::from_slice(content)
                    .map_err(|_| malformed("a JSON part is not valid JSON"))?;
                Value::from(v)
            }
            _ => Value::from(String::from_utf8_lossy(content).as_ref()),
        };
        fields.entry(name).or_default().push(value);
    }
    Ok(Some(Value::from(
        fields
            .into_iter()
            .map(|(k, v)| (Value::from(k), Value::from(v)))
            .collect::<BTreeMap<_, _>>(),
    )))
}

/// A boundary line: where it starts, where what follows it starts, its line end.
struct BoundaryLine {
    start: usize,
    end: usize,
    ending: &'static str,
}

/// The boundary lines from the first to the closing one (`--boundary--`), the last in the list.
/// Every line starting with the delimiter before the close must be a boundary line, each with
/// the first one's line end (CRLF or LF), after that same line end.
fn boundary_lines(body: &[u8], delimiter: &[u8]) -> Result<Vec<BoundaryLine>> {
    let mut lines: Vec<BoundaryLine> = Vec::new();
    let mut from = 0;
    while let Some(found) = body.get(from..).and_then(|tail| find(tail, delimiter)) {
        let start = from + found;
        from = start + 1;
        let at_line_start = start == 0 || body.get(start - 1) == Some(&b'\n');
        if !at_line_start {
            continue;
        }
        let after = body.get(start + delimiter.len()..).unwrap_or_default();
        let (close, after) = match after.strip_prefix(b"--") {
            Some(rest) => (true, rest),
            None => (false, after),
        };
        let blanks = after
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        let after = after.get(blanks..).unwrap_or_default();
        let ending = if after.starts_with(b"\r\n") {
            "\r\n"
        } else if after.starts_with(b"\n") {
            "\n"
        } else if close && after.is_empty() {
            ""
        } else {
            return Err(malformed(
                "a line starts with the boundary but is not a boundary line",
            ));
        };
        let end = body.len() - after.len() + ending.len();
        if let Some(first) = lines.first() {
            let preceded = body
                .get(..start)
                .is_some_and(|before| before.ends_with(first.ending.as_bytes()));
            let same_mode = match first.ending {
                // After LF lines, a CRLF before a line is content's CR and the line's LF.
                "\n" => ending != "\r\n",
                mode => ending == mode || ending.is_empty(),
            };
            if !preceded || !same_mode {
                return Err(malformed("the boundary lines' line ends differ"));
            }
        }
        lines.push(BoundaryLine { start, end, ending });
        if close {
            return Ok(lines);
        }
    }
    Err(match lines.is_empty() {
        true => malformed("no boundary line in the body"),
        false => malformed("the body is not closed by a boundary"),
    })
}

/// A part's headers, names lower-cased, up to the blank line; and the content after it. Folded
/// and repeated headers are refused, and any transfer encoding but the identity ones.
fn headers(mut s: &[u8]) -> Result<(BTreeMap<String, String>, &[u8])> {
    let mut out = BTreeMap::new();
    loop {
        let line_end = s
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(malformed("a part's headers do not end"))?;
        let (line, after) = s
            .split_at_checked(line_end)
            .ok_or(malformed("a part's headers do not end"))?;
        s = after.get(1..).unwrap_or_default();
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            return Err(malformed("a part's header is folded"));
        }
        let line =
            std::str::from_utf8(line).map_err(|_| malformed("a part's header is not UTF-8"))?;
        let (name, value) = line
            .split_once(':')
            .ok_or(malformed("a part's header has no colon"))?;
        let name = name.trim().to_ascii_lowercase();
        if out.insert(name, value.trim().to_string()).is_some() {
            return Err(malformed("a part repeats a header"));
        }
    }
    if let Some(encoding) = out.get("content-transfer-encoding")
        && !["7bit", "8bit", "binary"]
            .iter()
            .any(|e| encoding.eq_ignore_ascii_case(e))
    {
        return Err(malformed("a part has a content transfer encoding"));
    }
    Ok((out, s))
}

/// The `name` of a `Content-Disposition: form-data` part.
fn form_name(headers: &BTreeMap<String, String>) -> Result<Option<String>> {
    let Some(disposition) = headers.get("content-disposition") else {
        return Ok(None);
    };
    let kind = disposition.split(';').next().unwrap_or_default().trim();
    if !kind.eq_ignore_ascii_case("form-data") {
        return Ok(None);
    }
    Ok(media_params(disposition)?
        .remove("name")
        .filter(|n| !n.is_empty()))
}

/// The parameters of a header value (`type/subtype; key=value; key="quoted \"value\""`), names
/// lower-cased. A parameter without a value, repeated, or in RFC 2231's `key*=` form is refused.
fn media_params(header: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let Some((_, mut rest)) = header.split_once(';') else {
        return Ok(out);
    };
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return Ok(out);
        }
        let (name, after) = rest
            .split_once('=')
            .ok_or(malformed("a media type parameter has no value"))?;
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(malformed("a media type parameter's name is not a token"));
        }
        let after = after.trim_start_matches([' ', '\t']);
        let (value, next) = match after.strip_prefix('"') {
            Some(quoted) => quoted_string(quoted)?,
            None => {
                let len = after.bytes().take_while(|b| is_token_byte(*b)).count();
                let (value, next) = after.split_at_checked(len).unwrap_or((after, ""));
                if value.is_empty() {
                    return Err(malformed("a media type parameter's value is empty"));
                }
                (value.to_string(), next)
            }
        };
        let next = next.trim_start_matches([' ', '\t']);
        if !(next.is_empty() || next.starts_with(';')) {
            return Err(malformed("a media type parameter is followed by junk"));
        }
        if out.insert(name, value).is_some() {
            return Err(malformed("a media type parameter is repeated"));
        }
        rest = next;
    }
}

/// The content of a quoted string (after its opening quote) and what follows its closing one.
/// A backslash escapes only a special character, as Go's `mime.ParseMediaType` reads it.
fn quoted_string(s: &str) -> Result<(String, &str)> {
    let mut value = String::new();
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, s.get(i + 1..).unwrap_or_default())),
            '\\' => match chars.peek() {
                Some(&(_, next)) if "()<>@,;:\\\"/[]?=".contains(next) => {
                    value.push(next);
                    chars.next();
                }
                _ => value.push('\\'),
            },
            c => value.push(c),
        }
    }
    Err(malformed("a quoted media type parameter is not closed"))
}

/// RFC 2045's token characters (`*` is not one here: RFC 2231 parameters are refused).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=*".contains(&b)
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
        // Only a closing line: no fields.
        assert_eq!(
            bad("preamble\r\n--x--").map(|v| serde_json::to_value(v).ok()),
            Ok(Some(json!({})))
        );
    }

    #[test]
    fn an_empty_part_is_an_empty_value() {
        let body = "--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n\
            --x\r\nContent-Disposition: form-data; name=\"b\"\r\n\r\nv\r\n--x--";
        assert_eq!(
            parsed(body, "multipart/form-data; boundary=x"),
            json!({"a": [""], "b": ["v"]})
        );
    }

    /// Bodies another parser (Go's, OPA-Envoy's and many upstreams') would read as a different
    /// form: refused, never guessed.
    #[test]
    fn bodies_parsers_disagree_on_are_refused() {
        let field = |name: &str, value: &str| {
            format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}")
        };
        let cases = [
            // Junk after the closing dashes: Go reads on, and finds a field.
            format!(
                "--x--junk\r\n--x\r\n{}\r\n--x--",
                field("amount", "1000000")
            ),
            // A line that starts with the boundary inside a part.
            format!("--x\r\n{}\r\n--xy\r\n--x--", field("a", "1")),
            // Line ends that change: in a CRLF body, LF lines are content to Go.
            format!("--x\r\n{}\n--x--\n", field("a", "1")),
            format!(
                "--x\n{}\r\n--x\r\n{}\n--x--",
                field("a", "1"),
                field("b", "2")
            ),
            // Repeated, folded or encoded part headers.
            format!(
                "--x\r\nContent-Disposition: form-data; name=a\r\n{}\r\n--x--",
                field("b", "1")
            ),
            "--x\r\nContent-Disposition: form-data;\r\n name=a\r\n\r\n1\r\n--x--".into(),
            format!(
                "--x\r\nContent-Transfer-Encoding: quoted-printable\r\n{}\r\n--x--",
                field("a", "=31")
            ),
            // Parameters: RFC 2231, repeated, junk after a value.
            "--x\r\nContent-Disposition: form-data; name*=utf-8''amount\r\n\r\n1\r\n--x--".into(),
            "--x\r\nContent-Disposition: form-data; name=a; name=b\r\n\r\n1\r\n--x--".into(),
            "--x\r\nContent-Disposition: form-data; name=amount; junk\r\n\r\n1\r\n--x--".into(),
        ];
        for body in &cases {
            assert!(
                matches!(
                    parse(body.as_bytes(), "multipart/form-data; boundary=x"),
                    Err(InputError::Multipart(_))
                ),
                "{body:?}"
            );
        }
        for content_type in [
            "multipart/form-data; boundary*=x",
            "multipart/form-data; boundary=x; boundary=y",
        ] {
            assert!(
                matches!(parse(b"--x--", content_type), Err(InputError::Multipart(_))),
                "{content_type}"
            );
        }
    }

    #[test]
    fn parameters_and_part_types_read_as_go_reads_them() {
        // A backslash escapes only a special character.
        let body = "--x\r\nContent-Disposition: form-data; name=\"a\\mount\"\r\n\r\n1\r\n--x--";
        assert_eq!(
            parsed(body, "multipart/form-data; boundary=x"),
            json!({"a\\mount": ["1"]})
        );
        // The part's content type is matched as written: `Application/JSON` is text.
        let body = "--x\r\nContent-Disposition: form-data; name=j\r\n\
            Content-Type: Application/JSON\r\n\r\n{\"a\": 1}\r\n--x--";
        assert_eq!(
            parsed(body, "multipart/form-data; boundary=x"),
            json!({"j": ["{\"a\": 1}"]})
        );
        // Identity transfer encodings are fine.
        let body = "--x\r\nContent-Transfer-Encoding: 8bit\r\n\
            Content-Disposition: form-data; name=a\r\n\r\n1\r\n--x--";
        assert_eq!(
            parsed(body, "multipart/form-data; boundary=x"),
            json!({"a": ["1"]})
        );
    }
}
