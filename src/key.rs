//! The decision-cache key: the compiled policy set (one per rule and activation) plus the
//! values at every path of the input document it can read (`policy::analysis::reads`), so
//! that a hit is exactly what a fresh evaluation would answer.
//!
//! Paths are written with their length and each value as canonical JSON (`U` where
//! undefined), so no two different inputs feed the same bytes.

use aws_lc_rs::digest;

use crate::authn::{Authenticated, AuthnError};
use crate::cache::{Digest, to_array};
use crate::input::{CheckInput, Segment, TokenParts, is_token_path};

/// A key could not be built: the request is denied (failing closed), never keyed on less.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("a value the policy reads cannot be written: {0}")]
    Value(#[from] serde_json::Error),
    #[error("the verified claims cannot be read again: {0}")]
    Claims(#[from] AuthnError),
}

/// The key of one decision by the compiled policy `set` (`PolicySet::id`: unique per rule and
/// activation), which reads `paths`. The token-derived share is computed once per token and
/// set (memoised in `auth`); when it has to
/// build the token's document parts, it leaves them in `parts` for the evaluation that
/// follows a miss. Without `auth` (an anonymous request) the share is that of
/// `TokenParts::anonymous`, whose nulls no verified token's parts hold.
pub fn decision_key(
    set: u64,
    paths: &[Vec<Segment>],
    input: &CheckInput<'_>,
    auth: Option<&Authenticated>,
    parts: &mut Option<TokenParts>,
) -> Result<Digest, KeyError> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(&set.to_be_bytes());
    let share = match auth {
        Some(auth) => token_share(set, paths, auth, parts)?,
        None => token_part_digest(parts.get_or_insert_with(TokenParts::anonymous), paths)?,
    };
    ctx.update(&share);
    let mut buf = Vec::with_capacity(256);
    for path in paths.iter().filter(|p| !is_token_path(p)) {
        buf.clear();
        write_path(path, &mut buf);
        input.feed_key(path, &mut buf)?;
        ctx.update(&(buf.len() as u64).to_be_bytes());
        ctx.update(&buf);
    }
    Ok(to_array(ctx.finish()))
}

/// The token-derived share of a key: what the policy reads of `subject`, `actor`,
/// `delegation` and `token`.
fn token_share(
    set: u64,
    paths: &[Vec<Segment>],
    auth: &Authenticated,
    parts: &mut Option<TokenParts>,
) -> Result<Digest, KeyError> {
    if let Some(digest) = auth.key_part(set) {
        return Ok(digest);
    }
    let built = match parts {
        Some(built) => built,
        None => parts.insert(auth.parts()?),
    };
    let digest = token_part_digest(built, paths)?;
    auth.set_key_part(set, digest);
    Ok(digest)
}

/// The digest of what `parts` hold at the token-derived paths among `paths`.
pub fn token_part_digest(
    parts: &TokenParts,
    paths: &[Vec<Segment>],
) -> Result<Digest, serde_json::Error> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut buf = Vec::with_capacity(256);
    for path in paths {
        buf.clear();
        write_path(path, &mut buf);
        if parts.feed_key(path, &mut buf)? {
            ctx.update(&(buf.len() as u64).to_be_bytes());
            ctx.update(&buf);
        }
    }
    Ok(to_array(ctx.finish()))
}

fn write_path(path: &[Segment], buf: &mut Vec<u8>) {
    buf.extend_from_slice(&(path.len() as u64).to_be_bytes());
    for seg in path {
        match seg {
            Segment::Key(k) => {
                buf.push(b'k');
                buf.extend_from_slice(&(k.len() as u64).to_be_bytes());
                buf.extend_from_slice(k.as_bytes());
            }
            Segment::Index(i) => {
                buf.push(b'i');
                buf.extend_from_slice(&i.to_be_bytes());
            }
        }
    }
    buf.push(b'=');
}

#[cfg(test)]
mod tests;
