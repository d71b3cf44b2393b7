//! Our signatures and the stock `minisign` tool understand each other in both directions.

use std::process::Command;

use qx_core::{KeyPair, SigningKey, TrustedKeys};

fn minisign() -> Command {
    Command::new("minisign")
}

#[test]
fn minisign_cli_verifies_our_signature() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let kp = KeyPair::generate()?;
    let key = dir.path().join("release.key");
    let pubf = dir.path().join("release.pub");
    std::fs::write(&key, &kp.secret_key_file)?;
    std::fs::write(&pubf, &kp.public_key_file)?;
    let data = dir.path().join("manifest.json");
    std::fs::write(&data, b"{\"x\": 1}\n")?;
    let sk = SigningKey::from_file(&key)?;
    let sig = sk.sign(b"{\"x\": 1}\n", "quantix-os 0.0.5 dev")?;
    std::fs::write(dir.path().join("manifest.json.minisig"), sig)?;
    let out = minisign()
        .arg("-V")
        .arg("-p")
        .arg(&pubf)
        .arg("-m")
        .arg(&data)
        .output()?;
    assert!(
        out.status.success(),
        "minisign -V failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("quantix-os 0.0.5 dev"));

    // And it refuses a tampered file, so the check above can fail.
    std::fs::write(&data, b"{\"x\": 2}\n")?;
    let out = minisign()
        .arg("-V")
        .arg("-p")
        .arg(&pubf)
        .arg("-m")
        .arg(&data)
        .output()?;
    assert!(!out.status.success());
    Ok(())
}

#[test]
fn we_verify_minisign_cli_signature_and_use_its_key() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("cli.key");
    let pubf = dir.path().join("cli.pub");
    let st = minisign()
        .args(["-G", "-W", "-f", "-s"])
        .arg(&key)
        .arg("-p")
        .arg(&pubf)
        .output()?;
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let data = dir.path().join("manifest.json");
    std::fs::write(&data, b"release bytes\n")?;
    let st = minisign()
        .args(["-S", "-s"])
        .arg(&key)
        .arg("-m")
        .arg(&data)
        .output()?;
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let sig = std::fs::read_to_string(dir.path().join("manifest.json.minisig"))?;
    let mut keys = TrustedKeys::new();
    let id = keys.add_file(&pubf)?;
    assert_eq!(keys.verify(b"release bytes\n", &sig)?, id);
    assert!(keys.verify(b"release bytes!\n", &sig).is_err());

    // A key file written by the CLI signs with our code too.
    let sk = SigningKey::from_file(&key)?;
    assert_eq!(sk.key_id(), id);
    let ours = sk.sign(b"abc", "c")?;
    assert_eq!(keys.verify(b"abc", &ours)?, id);
    Ok(())
}
