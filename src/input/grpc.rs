//! gRPC request bodies as `parsed_body`, as OPA-Envoy decodes them with its
//! `proto-descriptor`: the first message of a call Envoy sent with `pack_as_bytes: true`,
//! decoded with the request type of the method its path names (`/package.Service/Method`) and
//! written as protobuf JSON (lowerCamelCase names, 64-bit integers as strings, enums by name).
//!
//! - No descriptors, no raw body, a compressed message, an unknown service or method, or a
//!   client-streaming method: `parsed_body` stays null.
//! - A frame longer than the bytes Envoy sent: `truncated_body`, never parsed.
//! - A path that is not `/Service/Method`, fewer than the 5 framing bytes, or bytes that are
//!   not the method's message: the request is a 400, as OPA-Envoy answers such a request with
//!   an error.

use std::path::{Path, PathBuf};

use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use regorus::Value;

use super::InputError;

/// The services whose calls onbehalf decodes: every file of `policy.proto_descriptors`.
#[derive(Debug, Clone)]
pub struct GrpcBodies {
    pool: DescriptorPool,
}

/// What became of one gRPC body.
#[derive(Debug, PartialEq)]
pub enum GrpcBody {
    Parsed(Value),
    /// Nothing to decode it with, or nothing to decode: `parsed_body` is null.
    Unknown,
    /// The first message is longer than the bytes Envoy sent.
    Truncated,
}

/// A descriptor source that cannot be loaded: start-up stops with it.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    #[error("{}: cannot be read: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {message}", .path.display())]
    Compile { path: PathBuf, message: String },
    #[error("{}: not a FileDescriptorSet (protoc --descriptor_set_out, buf build -o): {message}", .path.display())]
    Decode { path: PathBuf, message: String },
}

impl GrpcBodies {
    /// Loads every source: a directory (each `.proto` file below it, compiled with the
    /// directory as the import root), a `.proto` file (its directory the import root), or a
    /// binary `FileDescriptorSet`. Compiled with protox: no `protoc` is needed.
    pub fn load(sources: &[PathBuf]) -> Result<GrpcBodies, DescriptorError> {
        let mut pool = DescriptorPool::new();
        for path in sources {
            let compile_err = |message: String| DescriptorError::Compile {
                path: path.clone(),
                message,
            };
            let read_err = |source| DescriptorError::Read {
                path: path.clone(),
                source,
            };
            let meta = std::fs::metadata(path).map_err(read_err)?;
            let set = if meta.is_dir() {
                let mut files = Vec::new();
                proto_files(path, path, &mut files).map_err(read_err)?;
                if files.is_empty() {
                    return Err(compile_err("holds no .proto files".into()));
                }
                compile(path, &files).map_err(compile_err)?
            } else if path.extension().is_some_and(|e| e == "proto") {
                let root = path.parent().unwrap_or(Path::new("."));
                let name = path.file_name().map(PathBuf::from).unwrap_or_default();
                compile(root, &[name]).map_err(compile_err)?
            } else {
                let bytes = std::fs::read(path).map_err(read_err)?;
                let mut decoded = DescriptorPool::new();
                decoded
                    .decode_file_descriptor_set(bytes.as_slice())
                    .map_err(|e| DescriptorError::Decode {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                decoded.file_descriptor_protos().cloned().collect()
            };
            pool.add_file_descriptor_protos(set)
                .map_err(|e| compile_err(e.to_string()))?;
        }
        Ok(GrpcBodies { pool })
    }

    /// Every method the descriptors define, as `/package.Service/Method`.
    pub fn methods(&self) -> Vec<String> {
        self.pool
            .services()
            .flat_map(|s| {
                s.methods()
                    .map(|m| format!("/{}/{}", s.full_name(), m.name()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Decodes the body of a call to `/service/method` (`path`, the request's parsed path).
    pub fn decode(&self, path: &[&str], raw: &[u8]) -> Result<GrpcBody, InputError> {
        let [service, method] = path else {
            return Err(InputError::GrpcPath);
        };
        let Some((&compressed, rest)) = raw.split_first() else {
            return Err(InputError::GrpcFrame);
        };
        let Some((length, rest)) = rest.split_first_chunk::<4>() else {
            return Err(InputError::GrpcFrame);
        };
        if compressed != 0 {
            return Ok(GrpcBody::Unknown);
        }
        let length = u32::from_be_bytes(*length) as usize;
        // Only the first message, as OPA-Envoy reads it.
        let Some(message) = rest.get(..length) else {
            return Ok(GrpcBody::Truncated);
        };
        let Some(method) = self
            .pool
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == *method))
            .filter(|m| !m.is_client_streaming())
        else {
            return Ok(GrpcBody::Unknown);
        };
        let decoded =
            DynamicMessage::decode(method.input(), message).map_err(|_| InputError::GrpcMessage)?;
        let json = decoded
            .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
            .map_err(|_| InputError::GrpcMessage)?;
        Ok(GrpcBody::Parsed(Value::from(json)))
    }
}

/// The `.proto` files below `dir`, relative to `root`, in a stable order.
fn proto_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for path in entries {
        if path.is_dir() {
            proto_files(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto")
            && let Ok(relative) = path.strip_prefix(root)
        {
            out.push(relative.to_path_buf());
        }
    }
    Ok(())
}

/// `files` (relative to `root`) compiled with their imports.
fn compile(
    root: &Path,
    files: &[PathBuf],
) -> Result<Vec<prost_reflect::prost_types::FileDescriptorProto>, String> {
    let mut compiler = protox::Compiler::new([root]).map_err(|e| e.to_string())?;
    compiler.include_imports(true);
    compiler.open_files(files).map_err(|e| e.to_string())?;
    Ok(compiler.file_descriptor_set().file)
}

#[cfg(test)]
mod tests;
