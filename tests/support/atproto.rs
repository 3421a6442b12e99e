//! The PDS's XRPC API as the end-to-end tiers use it (curl on the droplet, at the
//! PDS's loopback port): sessions, posts, image blobs, every record of an account,
//! and the check that a repo's latest commit is signed by the key of its DID
//! document in the harness's PLC server (a CAR reader, the PLC key, DAG-CBOR).

use std::collections::BTreeMap;
use std::process::Command;

use serde_json::{json, Value};

use super::{describe, stdout, Droplet, GATEWAY};

/// An XRPC call to the PDS on the droplet, at its loopback port.
pub fn xrpc(d: &Droplet, method: &str, auth: Option<&str>, body: Option<&Value>) -> Value {
    let auth = auth
        .map(|a| format!("-H {}", shell_quote(a)))
        .unwrap_or_default();
    let cmd = match body {
        Some(_) => format!(
            "curl -sS --fail-with-body -X POST -H 'Content-Type: application/json' {auth} --data-binary @- http://127.0.0.1:3000/xrpc/{method}"
        ),
        None => format!("curl -sS --fail-with-body {auth} 'http://127.0.0.1:3000/xrpc/{method}'"),
    };
    let input = body.map(|b| b.to_string()).unwrap_or_default();
    let out = d.ssh_with_stdin("root", &cmd, input.as_bytes());
    assert!(out.status.success(), "{method}: {}", describe(&out));
    serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("{method} JSON ({e}): {}", stdout(&out)))
}

pub fn raw_get(d: &Droplet, path: &str) -> Vec<u8> {
    let out = d.ssh(
        "root",
        &format!("curl -sS --fail 'http://127.0.0.1:3000/xrpc/{path}'"),
    );
    assert!(out.status.success(), "{path}: {}", describe(&out));
    out.stdout
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub fn bearer(session: &Value) -> String {
    format!(
        "Authorization: Bearer {}",
        session["accessJwt"].as_str().unwrap()
    )
}

pub fn login(d: &Droplet, identifier: &str, password: &str) -> Value {
    xrpc(
        d,
        "com.atproto.server.createSession",
        None,
        Some(&json!({"identifier": identifier, "password": password})),
    )
}

pub fn now() -> String {
    "2026-12-03T12:00:00.000Z".to_string()
}

pub fn post(d: &Droplet, session: &Value, text: &str, embed: Option<Value>) -> Value {
    let mut record = json!({"$type": "app.bsky.feed.post", "text": text, "createdAt": now()});
    if let Some(embed) = embed {
        record["embed"] = embed;
    }
    xrpc(
        d,
        "com.atproto.repo.createRecord",
        Some(&bearer(session)),
        Some(
            &json!({"repo": session["did"], "collection": "app.bsky.feed.post", "record": record}),
        ),
    )
}

/// The CID of `did`'s latest commit on `d`: its repo head.
pub fn repo_head(d: &Droplet, did: &str) -> String {
    xrpc(
        d,
        &format!("com.atproto.sync.getLatestCommit?did={did}"),
        None,
        None,
    )["cid"]
        .as_str()
        .unwrap_or_else(|| panic!("no head for {did}"))
        .to_string()
}

/// Uploads `bytes` as a PNG blob and posts it; returns the blob's CID.
pub fn post_image(d: &Droplet, session: &Value, bytes: &[u8]) -> String {
    let cmd = format!(
        "curl -sS --fail-with-body -X POST -H 'Content-Type: image/png' -H {} --data-binary @- http://127.0.0.1:3000/xrpc/com.atproto.repo.uploadBlob",
        shell_quote(&bearer(session))
    );
    let out = d.ssh_with_stdin("root", &cmd, bytes);
    assert!(out.status.success(), "uploadBlob: {}", describe(&out));
    let blob: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let cid = blob["blob"]["ref"]["$link"].as_str().unwrap().to_string();
    post(
        d,
        session,
        "a picture",
        Some(
            json!({"$type": "app.bsky.embed.images", "images": [{"alt": "noise", "image": blob["blob"]}]}),
        ),
    );
    cid
}

/// Every record of `did`, by `collection/rkey`: its CID and its value.
pub fn records(d: &Droplet, did: &str) -> BTreeMap<String, (String, Value)> {
    let mut out = BTreeMap::new();
    for collection in ["app.bsky.feed.post", "app.bsky.graph.follow"] {
        let list = xrpc(
            d,
            &format!("com.atproto.repo.listRecords?repo={did}&collection={collection}&limit=100"),
            None,
            None,
        );
        for r in list["records"].as_array().unwrap() {
            let uri = r["uri"].as_str().unwrap();
            let key = uri.rsplit('/').take(2).collect::<Vec<_>>();
            out.insert(
                format!("{}/{}", key[1], key[0]),
                (r["cid"].as_str().unwrap().to_string(), r["value"].clone()),
            );
        }
    }
    out
}

/// A 1x1 PNG followed by `len` bytes of noise (after IEND, which decoders
/// ignore).
pub fn noise(seed: u8, len: usize) -> Vec<u8> {
    const PNG_1X1: [u8; 70] = [
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f,
        0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x64,
        0xf8, 0xcf, 0x50, 0x0f, 0x00, 0x03, 0x86, 0x01, 0x80, 0x5a, 0x34, 0x7d, 0x6b, 0x00, 0x00,
        0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ];
    let mut bytes = PNG_1X1.to_vec();
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    while bytes.len() < PNG_1X1.len() + len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.push(x as u8);
    }
    bytes
}

/// Reads an unsigned LEB128 varint (CAR section lengths, CID fields) at `at`.
fn varint(bytes: &[u8], at: &mut usize) -> u64 {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = bytes[*at];
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    panic!("varint longer than 64 bits");
}

/// The blocks of a CAR v1 file (`com.atproto.sync.getBlocks`), each as its
/// CID's SHA-256 digest and its bytes; every block's digest is checked.
pub fn car_blocks(car: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    use sha2::Digest;
    let mut at = 0;
    let header = varint(car, &mut at) as usize;
    at += header;
    let mut blocks = Vec::new();
    while at < car.len() {
        let len = varint(car, &mut at) as usize;
        let end = at + len;
        assert_eq!(varint(car, &mut at), 1, "a CIDv1");
        assert_eq!(varint(car, &mut at), 0x71, "a DAG-CBOR block");
        assert_eq!(varint(car, &mut at), 0x12, "a SHA-256 multihash");
        let digest_len = varint(car, &mut at) as usize;
        let digest = car[at..at + digest_len].to_vec();
        at += digest_len;
        let data = car[at..end].to_vec();
        assert_eq!(
            sha2::Sha256::digest(&data).as_slice(),
            digest.as_slice(),
            "a block whose bytes do not hash to its CID"
        );
        blocks.push((digest, data));
        at = end;
    }
    blocks
}

/// The key of the `#atproto` verification method of `did`'s document in the
/// harness's PLC server (secp256k1 or P-256).
pub enum AtprotoKey {
    K256(k256::ecdsa::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
}

impl AtprotoKey {
    pub fn verifies(&self, message: &[u8], sig: &[u8]) -> bool {
        use k256::ecdsa::signature::Verifier;
        match self {
            AtprotoKey::K256(key) => k256::ecdsa::Signature::from_slice(sig)
                .is_ok_and(|s| key.verify(message, &s).is_ok()),
            AtprotoKey::P256(key) => p256::ecdsa::Signature::from_slice(sig)
                .is_ok_and(|s| key.verify(message, &s).is_ok()),
        }
    }
}

pub fn plc_signing_key(did: &str) -> AtprotoKey {
    let out = Command::new("curl")
        .args(["-sS", "--fail", &format!("http://{GATEWAY}:2582/{did}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "PLC: {}", describe(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let method = doc["verificationMethod"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"].as_str().is_some_and(|id| id.ends_with("#atproto")))
        .unwrap_or_else(|| panic!("no #atproto verification method in {doc}"));
    let multibase = method["publicKeyMultibase"].as_str().unwrap();
    let bytes = bs58::decode(multibase.strip_prefix('z').expect("base58btc"))
        .into_vec()
        .unwrap();
    // "Multikey" (plc.directory today): a multicodec prefix and a compressed
    // key; the legacy types (this @did-plc/server): the curve in the type,
    // the key's SEC1 bytes as they are.
    let (curve, key) = match (method["type"].as_str().unwrap(), bytes.as_slice()) {
        ("Multikey", [0xe7, 0x01, key @ ..]) => ("k256", key),
        ("Multikey", [0x80, 0x24, key @ ..]) => ("p256", key),
        ("EcdsaSecp256k1VerificationKey2019", key) => ("k256", key),
        ("EcdsaSecp256r1VerificationKey2019", key) => ("p256", key),
        _ => panic!("{method}: neither a secp256k1 nor a P-256 key"),
    };
    if curve == "k256" {
        AtprotoKey::K256(k256::ecdsa::VerifyingKey::from_sec1_bytes(key).unwrap())
    } else {
        AtprotoKey::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(key).unwrap())
    }
}

/// The latest commit of `did` on `d`, checked against the DID document in the
/// PLC: the commit block (DAG-CBOR) without its `sig`, re-encoded, must verify
/// under the document's `#atproto` key. Returns the commit's rev.
pub fn verify_latest_commit(d: &Droplet, did: &str) -> String {
    use ipld_core::ipld::Ipld;
    let latest = xrpc(
        d,
        &format!("com.atproto.sync.getLatestCommit?did={did}"),
        None,
        None,
    );
    let cid = latest["cid"].as_str().unwrap();
    let car = raw_get(
        d,
        &format!("com.atproto.sync.getBlocks?did={did}&cids={cid}"),
    );
    let blocks = car_blocks(&car);
    assert_eq!(blocks.len(), 1, "getBlocks of one CID");
    let block = &blocks[0].1;
    let commit: Ipld = serde_ipld_dagcbor::from_slice(block).unwrap();
    // Re-encoding gives the same bytes: the encoding is canonical, so the
    // unsigned commit below is the bytes the PDS signed.
    assert_eq!(&serde_ipld_dagcbor::to_vec(&commit).unwrap(), block);
    let Ipld::Map(mut fields) = commit else {
        panic!("the commit is not a map")
    };
    assert_eq!(fields.get("did"), Some(&Ipld::String(did.to_string())));
    let Some(Ipld::Bytes(sig)) = fields.remove("sig") else {
        panic!("the commit has no sig")
    };
    let Some(Ipld::String(rev)) = fields.get("rev").cloned() else {
        panic!("the commit has no rev")
    };
    let unsigned = serde_ipld_dagcbor::to_vec(&Ipld::Map(fields)).unwrap();
    let key = plc_signing_key(did);
    assert!(
        key.verifies(&unsigned, &sig),
        "the commit {cid} of {did} does not verify against its DID document in the PLC"
    );
    // The check can fail: one byte changed and the signature no longer holds.
    let mut tampered = unsigned.clone();
    *tampered.last_mut().unwrap() ^= 1;
    assert!(!key.verifies(&tampered, &sig));
    rev
}
