//! One conformance suite for every [`Store`]: memory, a local directory,
//! and S3 (moto's server on loopback, from `cargo xtask deps`).

#[path = "support/moto.rs"]
mod moto;

use std::collections::BTreeMap;
use std::fs;
use std::sync::{Arc, Barrier};

use moto::Moto;
use repo_s3::{open_store, S3Config, S3Store};
use repo_store::{Error, LocalDir, MemStore, PutOutcome, Store};

fn sizes(store: &dyn Store, prefix: &str) -> BTreeMap<String, u64> {
    store
        .list(prefix)
        .unwrap()
        .into_iter()
        .map(|o| (o.key, o.size))
        .collect()
}

fn map(entries: &[(&str, u64)]) -> BTreeMap<String, u64> {
    entries.iter().map(|&(k, v)| (k.to_string(), v)).collect()
}

/// What every store promises (see `repo_store::store`).
fn conformance(s: &dyn Store) {
    let loc = s.location();

    // absent objects
    assert_eq!(s.get("nothing/here", 100).unwrap(), None, "{loc}");
    assert_eq!(s.head("nothing").unwrap(), None, "{loc}");
    assert!(!s.delete("nothing", None).unwrap(), "{loc}");
    assert!(!s.delete("nothing/here", Some("1")).unwrap(), "{loc}");
    assert!(s.list("nothing/").unwrap().is_empty(), "{loc}");

    // put_if_absent: created, then existed with the content unchanged
    assert_eq!(
        s.put_if_absent("a/x", b"first").unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        s.put_if_absent("a/x", b"second!").unwrap(),
        PutOutcome::Existed
    );
    assert_eq!(s.get("a/x", 100).unwrap().unwrap(), b"first", "{loc}");

    // get refuses what exceeds max_len, exactly at the boundary
    assert!(matches!(
        s.get("a/x", 4),
        Err(Error::Store { op: "get", .. })
    ));
    assert_eq!(s.get("a/x", 5).unwrap().unwrap(), b"first");

    // head
    let h = s.head("a/x").unwrap().unwrap();
    assert_eq!((h.key.as_str(), h.size), ("a/x", 5));
    let now = s.now().unwrap();
    assert!(
        h.modified + 3600 > now && h.modified <= now + 3600,
        "{loc}: {h:?} vs {now}"
    );

    // put replaces, and changes the version
    s.put("a/x", b"replaced").unwrap();
    assert_eq!(s.get("a/x", 100).unwrap().unwrap(), b"replaced");
    let h2 = s.head("a/x").unwrap().unwrap();
    assert_eq!(h2.size, 8);
    assert_ne!(h.version, h2.version, "{loc}");
    // put creates too, with the parents it needs
    s.put("a/deep/er/y", b"").unwrap();
    assert_eq!(s.get("a/deep/er/y", 0).unwrap().unwrap(), b"");

    // list: nested prefixes and sizes, versions as head gives them
    s.put_if_absent("a/b/c", b"123").unwrap();
    s.put_if_absent("ab/z", b"12").unwrap();
    s.put_if_absent("top", b"1").unwrap();
    assert_eq!(
        sizes(s, "a/"),
        map(&[("a/x", 8), ("a/deep/er/y", 0), ("a/b/c", 3)]),
        "{loc}"
    );
    assert_eq!(sizes(s, "a/b/"), map(&[("a/b/c", 3)]), "{loc}");
    assert_eq!(sizes(s, "ab/"), map(&[("ab/z", 2)]), "{loc}");
    assert_eq!(
        sizes(s, ""),
        map(&[
            ("a/x", 8),
            ("a/deep/er/y", 0),
            ("a/b/c", 3),
            ("ab/z", 2),
            ("top", 1)
        ]),
        "{loc}"
    );
    let listed = s.list("a/").unwrap();
    let x = listed.iter().find(|o| o.key == "a/x").unwrap();
    assert_eq!(x, &h2, "{loc}: list and head agree");

    // delete: a wrong version keeps the object, the right one removes it
    assert!(!s.delete("a/x", Some(&h.version)).unwrap(), "{loc}");
    assert!(!s.delete("a/x", Some("bogus")).unwrap(), "{loc}");
    assert_eq!(s.get("a/x", 100).unwrap().unwrap(), b"replaced");
    assert_eq!(
        s.head("a/x").unwrap().unwrap(),
        h2,
        "{loc}: the version survives"
    );
    assert!(s.delete("a/x", Some(&h2.version)).unwrap(), "{loc}");
    assert_eq!(s.get("a/x", 100).unwrap(), None);
    assert!(!s.delete("a/x", Some(&h2.version)).unwrap());
    // without a version
    assert!(s.delete("top", None).unwrap());
    assert!(!s.delete("top", None).unwrap());
    assert_eq!(s.head("top").unwrap(), None);
    assert_eq!(
        sizes(s, ""),
        map(&[("a/deep/er/y", 0), ("a/b/c", 3), ("ab/z", 2)]),
        "{loc}"
    );
    // a deleted key can be created again
    assert_eq!(
        s.put_if_absent("top", b"again").unwrap(),
        PutOutcome::Created
    );

    // invalid keys and prefixes are refused before anything happens
    for bad in ["../x", "/x", "a//b", "", "a/", "a/../b", "a b", "./x"] {
        assert!(
            matches!(s.get(bad, 10), Err(Error::InvalidKey(_))),
            "{loc} get {bad:?}"
        );
        assert!(
            matches!(s.put(bad, b"x"), Err(Error::InvalidKey(_))),
            "{loc} put {bad:?}"
        );
        assert!(
            matches!(s.put_if_absent(bad, b"x"), Err(Error::InvalidKey(_))),
            "{loc} put_if_absent {bad:?}"
        );
        assert!(
            matches!(s.head(bad), Err(Error::InvalidKey(_))),
            "{loc} head {bad:?}"
        );
        assert!(
            matches!(s.delete(bad, None), Err(Error::InvalidKey(_))),
            "{loc} delete {bad:?}"
        );
    }
    for bad in ["a", "../", "/", "a//", "/a/"] {
        assert!(
            matches!(s.list(bad), Err(Error::InvalidKey(_))),
            "{loc} list {bad:?}"
        );
    }
    // Lazily named objects behave like the others once written.
    assert_eq!(
        s.put_if_absent_lazy("lazy/ab/one", b"first").unwrap(),
        PutOutcome::Created,
        "{loc}"
    );
    assert_eq!(
        s.put_if_absent_lazy("lazy/ab/one", b"second").unwrap(),
        PutOutcome::Existed,
        "{loc}"
    );
    assert_eq!(
        s.get("lazy/ab/one", 10).unwrap().unwrap(),
        b"first",
        "{loc}"
    );
    s.make_durable(&["lazy/ab/one".to_string()]).unwrap();
}

/// Writers racing to create one key: exactly one wins and its bytes stay.
fn race(s: Arc<dyn Store>, key: &str) {
    const WRITERS: usize = 8;
    let barrier = Arc::new(Barrier::new(WRITERS));
    let threads: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (s, barrier, key) = (Arc::clone(&s), Arc::clone(&barrier), key.to_string());
            std::thread::spawn(move || {
                let bytes = format!("writer {i} of the race").into_bytes();
                barrier.wait();
                (i, s.put_if_absent(&key, &bytes).unwrap())
            })
        })
        .collect();
    let outcomes: Vec<(usize, PutOutcome)> =
        threads.into_iter().map(|t| t.join().unwrap()).collect();
    let winners: Vec<usize> = outcomes
        .iter()
        .filter(|(_, o)| *o == PutOutcome::Created)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{}: {outcomes:?}", s.location());
    assert_eq!(
        s.get(key, 100).unwrap().unwrap(),
        format!("writer {} of the race", winners[0]).into_bytes(),
        "{}",
        s.location()
    );
}

fn temp_files(root: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dirs.push(e.path());
            } else if e.file_name().to_string_lossy().starts_with(".tmp-") {
                found.push(e.path().display().to_string());
            }
        }
    }
    found
}

#[test]
fn mem_store_conforms() {
    conformance(&MemStore::new(1_700_000_000));
    race(Arc::new(MemStore::new(0)), "race/key");
}

#[test]
fn local_dir_conforms() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo/nested");
    assert!(LocalDir::open(&root).is_err(), "open needs the directory");
    let s = LocalDir::create(&root).unwrap();
    conformance(&s);
    // normal operations (including refused deletes) leave no temporary file
    assert_eq!(temp_files(&root), Vec::<String>::new());
    race(Arc::new(LocalDir::open(&root).unwrap()), "race/key");
    race(Arc::new(LocalDir::open(&root).unwrap()), "race2");
    assert_eq!(temp_files(&root), Vec::<String>::new());
}

/// Set in the child processes of [`local_dir_race_across_processes`]:
/// `<store root>,<go file>,<writer number>`.
const RACE_CHILD_ENV: &str = "REPO_STORE_TEST_RACE_CHILD";

/// Eight processes race to create one key in a directory: exactly one
/// wins and its bytes stay. The test binary runs itself as the children.
#[test]
fn local_dir_race_across_processes() {
    if let Ok(args) = std::env::var(RACE_CHILD_ENV) {
        let mut parts = args.splitn(3, ',');
        let (root, go, i) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let s = LocalDir::open(root).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !std::path::Path::new(go).exists() {
            assert!(std::time::Instant::now() < deadline, "no start signal");
            std::thread::yield_now();
        }
        let outcome = s
            .put_if_absent("race/key", format!("process {i}").as_bytes())
            .unwrap();
        println!("race-outcome {i} {outcome:?}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let s = LocalDir::create(&root).unwrap();
    let go = dir.path().join("go");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..8)
        .map(|i| {
            std::process::Command::new(&exe)
                .args(["--exact", "local_dir_race_across_processes", "--nocapture"])
                .env(
                    RACE_CHILD_ENV,
                    format!("{},{},{i}", root.display(), go.display()),
                )
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    fs::write(&go, b"").unwrap();
    let mut winners = Vec::new();
    let mut answers = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("race-outcome ") {
                answers += 1;
                if let Some(i) = rest.strip_suffix(" Created") {
                    winners.push(i.to_string());
                }
            }
        }
    }
    assert_eq!(answers, 8);
    assert_eq!(winners.len(), 1, "{winners:?}");
    assert_eq!(
        s.get("race/key", 100).unwrap().unwrap(),
        format!("process {}", winners[0]).into_bytes()
    );
    assert_eq!(temp_files(&root), Vec::<String>::new());
}

#[test]
fn local_dir_ignores_temp_files_and_sweeps_stale_ones() {
    let dir = tempfile::tempdir().unwrap();
    let s = LocalDir::create(dir.path()).unwrap();
    s.put("a/x", b"1").unwrap();
    // a writer that crashed before publishing
    fs::write(dir.path().join("a/.tmp-0123456789abcdef"), b"half").unwrap();
    fs::write(dir.path().join(".tmp-del-00"), b"trash").unwrap();
    assert_eq!(sizes(&s, ""), map(&[("a/x", 1)]));
    // keys that would spell a temporary file are refused
    assert!(matches!(
        s.get(".tmp-del-00", 100),
        Err(Error::InvalidKey(_))
    ));
    assert!(matches!(s.put("a/.tmp-1", b""), Err(Error::InvalidKey(_))));
    // fresh temporary files may belong to live writers: kept
    assert_eq!(s.sweep_temp().unwrap(), 0);
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for p in ["a/.tmp-0123456789abcdef", ".tmp-del-00"] {
        let f = fs::File::options()
            .write(true)
            .open(dir.path().join(p))
            .unwrap();
        f.set_modified(old).unwrap();
    }
    assert_eq!(s.sweep_temp().unwrap(), 2);
    assert_eq!(temp_files(dir.path()), Vec::<String>::new());
    assert_eq!(s.get("a/x", 10).unwrap().unwrap(), b"1");
}

#[test]
fn local_dir_does_not_follow_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("secret"), b"outside the root").unwrap();
    let root = dir.path().join("root");
    let s = LocalDir::create(&root).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), root.join("file")).unwrap();

    // through a linked directory: refused, nothing written outside
    assert!(s.get("dir/secret", 100).is_err());
    assert!(s.head("dir/secret").is_err());
    assert!(s.put("dir/new", b"x").is_err());
    assert!(s.put_if_absent("dir/new", b"x").is_err());
    assert!(s.delete("dir/secret", None).is_err());
    assert!(s.list("dir/").is_err());
    assert!(!outside.join("new").exists());
    // a linked file: not read
    assert!(s.get("file", 100).is_err());
    assert!(s.head("file").is_err());
    // listings skip links
    s.put("real", b"1").unwrap();
    assert_eq!(sizes(&s, ""), map(&[("real", 1)]));
    // put replaces the link itself, never the file it points to
    s.put("file", b"mine").unwrap();
    assert_eq!(
        fs::read(outside.join("secret")).unwrap(),
        b"outside the root"
    );
    assert_eq!(s.get("file", 100).unwrap().unwrap(), b"mine");
}

#[test]
fn open_store_by_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r");
    let s = open_store(path.to_str().unwrap(), true).unwrap();
    s.put("k", b"v").unwrap();
    let s = open_store(&format!("file://{}", path.display()), false).unwrap();
    assert_eq!(s.get("k", 10).unwrap().unwrap(), b"v");
    for bad in ["http://example.com/r", "ftp://host/r"] {
        assert!(
            matches!(open_store(bad, true), Err(Error::Url { .. })),
            "{bad}"
        );
    }
}

#[test]
fn s3_store_conforms_on_moto() {
    let moto = Moto::start();
    let s = moto.s3_store("conformance");
    assert_eq!(s.location(), "s3://conformance");
    conformance(&s);
    // with a prefix, keys are relative to it and nothing leaks across
    let p = moto.s3_store("prefixed/some/where");
    assert_eq!(p.location(), "s3://prefixed/some/where");
    conformance(&p);
    let other = S3Store::with_config("s3://prefixed/some", moto.config("x")).unwrap();
    other.put("outside", b"1").unwrap();
    assert_eq!(
        sizes(&other, ""),
        map(&[
            ("outside", 1),
            ("where/a/deep/er/y", 0),
            ("where/a/b/c", 3),
            ("where/lazy/ab/one", 5),
            ("where/ab/z", 2),
            ("where/top", 5)
        ])
    );
    assert!(p.head("outside").unwrap().is_none());
    assert_eq!(p.list("").unwrap().len(), 5);
}

#[test]
fn s3_put_if_absent_race_on_moto() {
    let moto = Moto::start();
    let s: Arc<dyn Store> = Arc::new(moto.s3_store("race"));
    for round in 0..3 {
        race(Arc::clone(&s), &format!("race/{round}"));
    }
}

#[test]
fn s3_refuses_plain_http_off_loopback() {
    for endpoint in [
        "http://example.com:9000",
        "http://10.0.0.1:9000",
        "http://[2001:db8::1]:9000",
        "http://localhost.example.com",
        "ftp://127.0.0.1",
    ] {
        let config = S3Config {
            endpoint: Some(endpoint.into()),
            ..S3Config::default()
        };
        let r = S3Store::with_config("s3://bucket/p", config);
        assert!(matches!(r, Err(Error::Url { .. })), "{endpoint}: {r:?}");
    }
    for endpoint in [
        "http://localhost:9000",
        "http://127.0.0.2:9000",
        "http://[::1]:9000",
        "https://s3.example.com",
    ] {
        let config = S3Config {
            endpoint: Some(endpoint.into()),
            ..S3Config::default()
        };
        S3Store::with_config("s3://bucket/p", config).unwrap();
    }
    for url in [
        "s3://",
        "s3://b",
        "s3://Bucket",
        "s3://bucket/a//b",
        "s3://bucket/../x",
        "gs://bucket",
    ] {
        assert!(
            matches!(
                S3Store::with_config(url, S3Config::default()),
                Err(Error::Url { .. })
            ),
            "{url}"
        );
    }
    // user info in the endpoint: refused, and not echoed
    let config = S3Config {
        endpoint: Some("https://user:pass-word-xyz@s3.example.com".into()),
        ..S3Config::default()
    };
    let e = S3Store::with_config("s3://bucket", config).unwrap_err();
    assert!(!e.to_string().contains("pass-word-xyz"), "{e}");
}

#[test]
fn s3_never_shows_the_secret() {
    const SECRET: &str = "SeCrEt-NeVeR-ShOwN-4242";
    let moto = Moto::start();
    let s = moto.s3_store_with_secret("secretive/p", SECRET);
    s.put("k", b"v").unwrap();
    let mut seen = vec![
        format!("{s:?}"),
        s.location(),
        format!("{:?}", moto.config(SECRET)),
    ];
    // errors: too large, a bucket that does not exist
    seen.push(s.get("k", 0).unwrap_err().to_string());
    let missing = S3Store::with_config("s3://no-such-bucket", moto.config(SECRET)).unwrap();
    for e in [
        missing.get("k", 10).err(),
        missing.put("k", b"v").err(),
        missing.list("").err(),
        missing.put_if_absent("k", b"v").err(),
    ]
    .into_iter()
    .flatten()
    {
        seen.push(format!("{e} {e:?}"));
    }
    for text in &seen {
        assert!(!text.contains(SECRET), "secret shown in {text}");
    }
    assert!(seen.len() >= 5, "{seen:?}");
}
