//! OPA bundles: a directory or a `.tar.gz` of `.rego` files, `data.json`/`data.yaml` at their
//! paths, an optional `.manifest` (revision, roots) and an optional `.signatures.json`.
//!
//! Reading an archive is defensive: size limits before and while decompressing, regular files
//! only (no links), no absolute or `..` paths escaping the bundle, no duplicates. Signatures
//! follow OPA's format: a JWT whose payload lists every file with its hash; JSON files are
//! hashed in OPA's canonical form (keys sorted, compact), other files byte for byte.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path};

use aws_lc_rs::digest;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

pub const MANIFEST: &str = ".manifest";
pub const SIGNATURES: &str = ".signatures.json";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the archive is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the archive is not a valid .tar.gz: {0}")]
    Archive(String),
    #[error("the archive entry `{0}` is a link or special file; bundles hold regular files only")]
    NotAFile(String),
    #[error("the archive entry `{0}` has an unsafe path")]
    UnsafePath(String),
    #[error("the bundle has `{0}` twice")]
    Duplicate(String),
    #[error("{MANIFEST} is not valid: {0}")]
    Manifest(String),
    #[error("the bundle is not signed, and signatures are required")]
    Unsigned,
    #[error("the bundle signature is invalid: {0}")]
    Signature(String),
}

/// Size limits applied while reading an archive.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest compressed archive.
    pub max_archive_bytes: u64,
    /// Largest total of the files once decompressed.
    pub max_content_bytes: u64,
}

/// `.manifest`: OPA's bundle metadata. Unknown fields are kept out of the way, not refused,
/// as OPA tooling adds its own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(default)]
    pub revision: String,
    /// Path prefixes (`envoy/authz`) the bundle owns; `None` or `[""]` means everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roots: Option<Vec<String>>,
}

/// A bundle's files, read into memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// Bundle-relative paths (`a/b/data.json`) to contents; `.manifest` and
    /// `.signatures.json` included when present.
    files: BTreeMap<String, Vec<u8>>,
    manifest: Manifest,
}

/// A key that may sign bundles, from configuration.
pub struct SigningKey {
    pub id: String,
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

#[derive(Debug, Serialize, Deserialize)]
struct SignaturesFile {
    signatures: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SignedFiles {
    files: Vec<FileHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    keyid: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct FileHash {
    name: String,
    hash: String,
    algorithm: String,
}

// === impl SigningKey ===

impl SigningKey {
    /// A verification key from a PEM public key.
    pub fn from_pem(id: &str, algorithm: Algorithm, pem: &[u8]) -> Result<SigningKey, String> {
        use jsonwebtoken::AlgorithmFamily;
        let key = match algorithm.family() {
            AlgorithmFamily::Rsa => DecodingKey::from_rsa_pem(pem),
            AlgorithmFamily::Ec => DecodingKey::from_ec_pem(pem),
            AlgorithmFamily::Ed => DecodingKey::from_ed_pem(pem),
            AlgorithmFamily::Hmac => return Err("HMAC keys are not supported".into()),
        }
        .map_err(|e| format!("not a PEM public key for {algorithm:?}: {e}"))?;
        Ok(SigningKey {
            id: id.to_string(),
            algorithm,
            key,
        })
    }
}

// === impl Bundle ===

impl Bundle {
    /// Builds a bundle from files (tests and `policy build`).
    pub fn from_files(files: BTreeMap<String, Vec<u8>>) -> Result<Bundle, BundleError> {
        let manifest = match files.get(MANIFEST) {
            Some(bytes) => {
                serde_json::from_slice(bytes).map_err(|e| BundleError::Manifest(e.to_string()))?
            }
            None => Manifest::default(),
        };
        Ok(Bundle { files, manifest })
    }

    /// Reads a directory as a bundle. Hidden entries are skipped (the `..data` folders of a
    /// mounted ConfigMap would load twice), except `.manifest` and `.signatures.json` at the
    /// top; symlinks are followed, as a ConfigMap's files are symlinks.
    pub fn from_dir(dir: &Path) -> Result<Bundle, BundleError> {
        let mut files = BTreeMap::new();
        let mut pending = vec![dir.to_path_buf()];
        let read_err = |path: &Path, source| BundleError::Read {
            path: path.display().to_string(),
            source,
        };
        while let Some(current) = pending.pop() {
            let entries = std::fs::read_dir(&current).map_err(|e| read_err(&current, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| read_err(&current, e))?;
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                let top_meta = current == dir && (name == MANIFEST || name == SIGNATURES);
                if name.starts_with('.') && !top_meta {
                    continue;
                }
                if path.is_dir() {
                    pending.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(dir)
                    .map_err(|_| BundleError::UnsafePath(path.display().to_string()))?;
                let rel = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join("/");
                let bytes = std::fs::read(&path).map_err(|e| read_err(&path, e))?;
                files.insert(rel, bytes);
            }
        }
        Bundle::from_files(files)
    }

    /// Reads a gzipped tar archive, within `limits`.
    pub fn from_tar_gz(archive: &[u8], limits: Limits) -> Result<Bundle, BundleError> {
        if archive.len() as u64 > limits.max_archive_bytes {
            return Err(BundleError::TooLarge(limits.max_archive_bytes));
        }
        let gz = flate2::read::GzDecoder::new(archive);
        let mut tar = tar::Archive::new(gz);
        let mut files = BTreeMap::new();
        let mut total: u64 = 0;
        let entries = tar
            .entries()
            .map_err(|e| BundleError::Archive(e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| BundleError::Archive(e.to_string()))?;
            let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            match entry.header().entry_type() {
                tar::EntryType::Directory => continue,
                tar::EntryType::Regular | tar::EntryType::Continuous => {}
                // pax/GNU metadata entries describe the next entry; tar handles them.
                tar::EntryType::XGlobalHeader | tar::EntryType::XHeader => continue,
                _ => return Err(BundleError::NotAFile(raw_path)),
            }
            let name = safe_path(&raw_path)?;
            let remaining = limits.max_content_bytes.saturating_sub(total);
            let mut bytes = Vec::new();
            entry
                .take(remaining.saturating_add(1))
                .read_to_end(&mut bytes)
                .map_err(|e| BundleError::Archive(e.to_string()))?;
            total = total.saturating_add(bytes.len() as u64);
            if total > limits.max_content_bytes {
                return Err(BundleError::TooLarge(limits.max_content_bytes));
            }
            if files.insert(name.clone(), bytes).is_some() {
                return Err(BundleError::Duplicate(name));
            }
        }
        Bundle::from_files(files)
    }

    /// Writes the bundle as a gzipped tar, files in a stable order.
    pub fn to_tar_gz(&self) -> Result<Vec<u8>, BundleError> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        for (name, bytes) in &self.files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_entry_type(tar::EntryType::Regular);
            tar.append_data(&mut header, name, bytes.as_slice())
                .map_err(|e| BundleError::Archive(e.to_string()))?;
        }
        let gz = tar
            .into_inner()
            .map_err(|e| BundleError::Archive(e.to_string()))?;
        gz.finish().map_err(|e| BundleError::Archive(e.to_string()))
    }

    pub fn files(&self) -> &BTreeMap<String, Vec<u8>> {
        &self.files
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The manifest's revision, or a content digest when it has none.
    pub fn revision(&self) -> String {
        match self.manifest.revision.is_empty() {
            false => self.manifest.revision.clone(),
            true => format!(
                "sha256:{}",
                self.digest().chars().take(12).collect::<String>()
            ),
        }
    }

    /// SHA-256 over every file's name and contents, in order: equal digests, equal bundles.
    pub fn digest(&self) -> String {
        let mut ctx = digest::Context::new(&digest::SHA256);
        for (name, bytes) in &self.files {
            ctx.update(&(name.len() as u64).to_be_bytes());
            ctx.update(name.as_bytes());
            ctx.update(&(bytes.len() as u64).to_be_bytes());
            ctx.update(bytes);
        }
        hex(ctx.finish().as_ref())
    }

    pub fn is_signed(&self) -> bool {
        self.files.contains_key(SIGNATURES)
    }

    /// Checks `.signatures.json` against `keys`: the JWT must verify with the key it names, and
    /// list exactly the bundle's files with matching hashes. Without a signature the bundle is
    /// refused when `required`, else accepted.
    pub fn verify(&self, keys: &[SigningKey], required: bool) -> Result<(), BundleError> {
        let Some(raw) = self.files.get(SIGNATURES) else {
            return match required {
                true => Err(BundleError::Unsigned),
                false => Ok(()),
            };
        };
        let bad = |m: String| BundleError::Signature(m);
        let sigs: SignaturesFile =
            serde_json::from_slice(raw).map_err(|e| bad(format!("{SIGNATURES}: {e}")))?;
        let [jwt] = sigs.signatures.as_slice() else {
            return Err(bad(format!(
                "{SIGNATURES} must hold exactly one signature, found {}",
                sigs.signatures.len()
            )));
        };
        let header = jsonwebtoken::decode_header(jwt).map_err(|e| bad(e.to_string()))?;
        let unverified: SignedFiles = jsonwebtoken::dangerous::insecure_decode_claims(jwt)
            .map_err(|e| bad(format!("payload: {e}")))?;
        let key_id = unverified.keyid.as_deref().or(header.kid.as_deref());
        let key = match (key_id, keys) {
            (Some(id), _) => keys.iter().find(|k| k.id == id),
            (None, [only]) => Some(only),
            (None, _) => None,
        }
        .ok_or_else(|| bad(format!("no configured key `{}`", key_id.unwrap_or(""))))?;
        let mut validation = Validation::new(key.algorithm);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        let signed: SignedFiles = jsonwebtoken::decode(jwt, &key.key, &validation)
            .map_err(|e| bad(e.to_string()))?
            .claims;

        let mut listed = BTreeMap::new();
        for f in &signed.files {
            let name = f.name.trim_start_matches('/').to_string();
            if listed.insert(name.clone(), f).is_some() {
                return Err(bad(format!("`{name}` is listed twice")));
            }
        }
        for (name, bytes) in self.files.iter().filter(|(n, _)| n.as_str() != SIGNATURES) {
            let entry = listed
                .remove(name)
                .ok_or_else(|| bad(format!("`{name}` is not covered by the signature")))?;
            let actual = file_hash(name, bytes, &entry.algorithm).map_err(bad)?;
            if !actual.eq_ignore_ascii_case(&entry.hash) {
                return Err(bad(format!("`{name}` does not match its signed hash")));
            }
        }
        if let Some(missing) = listed.keys().next() {
            return Err(bad(format!(
                "signed file `{missing}` is missing from the bundle"
            )));
        }
        Ok(())
    }

    /// Adds `.signatures.json` signing every other file with `key`.
    pub fn sign(
        &mut self,
        key: &EncodingKey,
        algorithm: Algorithm,
        key_id: Option<&str>,
    ) -> Result<(), BundleError> {
        self.files.remove(SIGNATURES);
        let files = self
            .files
            .iter()
            .map(|(name, bytes)| {
                Ok(FileHash {
                    name: name.clone(),
                    hash: file_hash(name, bytes, "SHA-256").map_err(BundleError::Signature)?,
                    algorithm: "SHA-256".into(),
                })
            })
            .collect::<Result<Vec<_>, BundleError>>()?;
        let claims = SignedFiles {
            files,
            keyid: key_id.map(str::to_string),
        };
        let mut header = Header::new(algorithm);
        header.kid = key_id.map(str::to_string);
        let jwt = jsonwebtoken::encode(&header, &claims, key)
            .map_err(|e| BundleError::Signature(e.to_string()))?;
        let sigs = serde_json::to_vec(&SignaturesFile {
            signatures: vec![jwt],
        })
        .map_err(|e| BundleError::Signature(e.to_string()))?;
        self.files.insert(SIGNATURES.into(), sigs);
        Ok(())
    }
}

/// `onbehalf policy build`: the bundle of a policy directory — `.rego` files (tests
/// excluded), data files and a `.manifest` — signed when a key is given.
pub fn build(
    dir: &Path,
    revision: Option<&str>,
    signing: Option<(Vec<u8>, String, Option<String>)>,
) -> Result<Bundle, BundleError> {
    let source = Bundle::from_dir(dir)?;
    let mut files: BTreeMap<String, Vec<u8>> = source
        .files
        .iter()
        .filter(|(name, _)| {
            let file = name.rsplit('/').next().unwrap_or(name);
            (file.ends_with(".rego") && !file.ends_with("_test.rego"))
                || matches!(file, "data.json" | "data.yaml" | "data.yml")
        })
        .map(|(n, b)| (n.clone(), b.clone()))
        .collect();
    let mut manifest = source.manifest.clone();
    manifest.revision = match revision {
        Some(r) => r.to_string(),
        None if !manifest.revision.is_empty() => manifest.revision,
        None => Bundle::from_files(files.clone())?.revision(),
    };
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| BundleError::Manifest(e.to_string()))?;
    files.insert(MANIFEST.into(), manifest_bytes);
    let mut bundle = Bundle::from_files(files)?;
    if let Some((pem, alg, key_id)) = signing {
        let algorithm = crate::jose::parse_algorithm(&alg)
            .ok_or_else(|| BundleError::Signature(format!("unknown algorithm `{alg}`")))?;
        let key = match algorithm.family() {
            jsonwebtoken::AlgorithmFamily::Rsa => EncodingKey::from_rsa_pem(&pem),
            jsonwebtoken::AlgorithmFamily::Ec => EncodingKey::from_ec_pem(&pem),
            jsonwebtoken::AlgorithmFamily::Ed => EncodingKey::from_ed_pem(&pem),
            jsonwebtoken::AlgorithmFamily::Hmac => {
                return Err(BundleError::Signature("HMAC keys are not supported".into()));
            }
        }
        .map_err(|e| BundleError::Signature(format!("not a PEM private key for {alg}: {e}")))?;
        bundle.sign(&key, algorithm, key_id.as_deref())?;
    }
    Ok(bundle)
}

/// A bundle-relative path with `/` separators, or an error when the path could leave the
/// bundle. A leading `/` is allowed (OPA writes `/data.json`).
fn safe_path(raw: &str) -> Result<String, BundleError> {
    let mut parts = Vec::new();
    for c in Path::new(raw.trim_start_matches('/')).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(BundleError::UnsafePath(raw.to_string()));
            }
        }
    }
    if parts.is_empty() {
        return Err(BundleError::UnsafePath(raw.to_string()));
    }
    Ok(parts.join("/"))
}

/// OPA's file hash: JSON files canonicalized first, others as they are.
fn file_hash(name: &str, bytes: &[u8], algorithm: &str) -> Result<String, String> {
    let alg = match algorithm.to_ascii_uppercase().as_str() {
        "SHA-256" => &digest::SHA256,
        "SHA-384" => &digest::SHA384,
        "SHA-512" => &digest::SHA512,
        other => return Err(format!("hash algorithm `{other}` is not supported")),
    };
    let is_json = name.ends_with(".json") || name == MANIFEST;
    let canonical;
    let input = match is_json {
        true => {
            let value: serde_json::Value =
                serde_json::from_slice(bytes).map_err(|e| format!("`{name}` is not JSON: {e}"))?;
            let mut out = String::new();
            canonical_json(&value, &mut out);
            canonical = out;
            canonical.as_bytes()
        }
        false => bytes,
    };
    Ok(hex(digest::digest(alg, input).as_ref()))
}

/// Compact JSON with object keys sorted, as OPA hashes JSON files.
fn canonical_json(v: &serde_json::Value, out: &mut String) {
    use serde_json::Value as J;
    match v {
        J::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(k) {
                    canonical_json(v, out);
                }
            }
            out.push('}');
        }
        J::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
