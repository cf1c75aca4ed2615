//! The daemon's API keys: read from `--api-keys-file`, or the generated key of the account
//! `default`, kept hashed in the data dir.

use std::path::Path;

use anyhow::{bail, Context};

/// (account, BLAKE3 of the key) from a keys file, or for the generated key of `default`.
/// Only hashes are kept: the daemon reads `DATA_DIR/api-key.blake3`, and `DATA_DIR/api-key`
/// is there for the operator to read (and may be deleted).
pub(crate) fn load_keys(
    data_dir: &Path,
    file: Option<&Path>,
) -> anyhow::Result<Vec<(String, blake3::Hash)>> {
    if let Some(file) = file {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let [account, key] = line.split_whitespace().collect::<Vec<_>>()[..] else {
                bail!("{}:{}: expected `ACCOUNT KEY`", file.display(), n + 1);
            };
            let hash = match key.strip_prefix("blake3:") {
                Some(hex) => blake3::Hash::from_hex(hex)
                    .with_context(|| format!("{}:{}: bad blake3 hash", file.display(), n + 1))?,
                None => blake3::hash(key.as_bytes()),
            };
            keys.push((account.to_string(), hash));
        }
        return Ok(keys);
    }
    let hash_path = data_dir.join("api-key.blake3");
    if let Ok(hex) = std::fs::read_to_string(&hash_path) {
        let hash = blake3::Hash::from_hex(hex.trim()).context("reading api-key.blake3")?;
        return Ok(vec![("default".into(), hash)]);
    }
    let key_path = data_dir.join("api-key");
    if let Ok(key) = std::fs::read_to_string(&key_path) {
        // A data dir from before keys were kept hashed: keep its key.
        let hash = blake3::hash(key.trim().as_bytes());
        write_private(&hash_path, &hash.to_hex())?;
        return Ok(vec![("default".into(), hash)]);
    }
    let key = format!("chs_{}", hex_key());
    let hash = blake3::hash(key.as_bytes());
    write_private(&key_path, &key)?;
    write_private(&hash_path, &hash.to_hex())?;
    println!(
        "API key for account `default` (also in {}): {key}",
        key_path.display()
    );
    Ok(vec![("default".into(), hash)])
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    std::io::Write::write_all(&mut f, format!("{text}\n").as_bytes())?;
    f.sync_all()?;
    // The name is durable only once its directory is synced.
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn hex_key() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
