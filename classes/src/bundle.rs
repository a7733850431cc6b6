//! A room class's bundle: one ES module file, read once, compiled once at
//! startup (and by `--check-config`) so a syntax error or a missing class is
//! a startup error naming the file and line, never a room's surprise.

use std::sync::{Arc, OnceLock};

use sha2::{Digest, Sha256};

use crate::engine;
use crate::instance::{ClassError, Limits};
use crate::spec::ClassSpec;

/// Largest bundle accepted.
pub const MAX_BUNDLE_BYTES: usize = 16 << 20;

#[derive(Debug, Clone)]
pub struct Bundle {
    pub spec: ClassSpec,
    /// The module's source.
    pub source: Arc<str>,
    /// The first 12 hex digits of the source's SHA-256: which code a room runs.
    pub hash: String,
    /// Its bytecode, once compiled (shared by the bundle's clones).
    pub(crate) compiled: Arc<Compiled>,
}

/// A bundle's module bytecode, set by the first compilation.
#[derive(Default)]
pub(crate) struct Compiled(OnceLock<Vec<u8>>);

impl Compiled {
    pub(crate) fn get(&self) -> Option<&[u8]> {
        self.0.get().map(Vec::as_slice)
    }

    pub(crate) fn set(&self, bytes: Vec<u8>) -> Result<(), Vec<u8>> {
        self.0.set(bytes)
    }
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Compiled({} bytes)", self.get().map_or(0, <[u8]>::len))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge { path: String },
    #[error("{path}: {error}")]
    Compile { path: String, error: ClassError },
}

impl Bundle {
    /// Reads the spec's file and checks that it compiles and exports its class.
    pub fn load(spec: &ClassSpec) -> Result<Self, BundleError> {
        let path = spec.path.display().to_string();
        let bytes = std::fs::read(&spec.path)
            .map_err(|error| BundleError::Read { path: path.clone(), error })?;
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge { path });
        }
        let source: Arc<str> = String::from_utf8_lossy(&bytes).into();
        let bundle = Self::from_source(spec.clone(), source);
        engine::check(&bundle, &Limits::default())
            .map_err(|error| BundleError::Compile { path, error })?;
        Ok(bundle)
    }

    /// A bundle from source already in memory (not compiled yet).
    pub fn from_source(spec: ClassSpec, source: Arc<str>) -> Self {
        let digest = Sha256::digest(source.as_bytes());
        let hash = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        Self { spec, source, hash, compiled: Arc::default() }
    }

    /// The module name errors and stack traces show.
    pub fn name(&self) -> String {
        self.spec.path.display().to_string()
    }
}
