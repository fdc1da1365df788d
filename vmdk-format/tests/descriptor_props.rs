//! Property: `parse(serialize(d)) == d` for every serialisable descriptor.

use proptest::prelude::*;
use vmdk_format::descriptor::{Access, CreateType, Descriptor, Encoding, ExtentLine, ExtentType};

fn text(cp1252: bool) -> impl Strategy<Value = String> {
    // Printable text including spaces, `@`, `=`, `#`, non-ASCII; never a
    // quote, line break or NUL (the format cannot carry those).
    let pattern = if cp1252 {
        "[ -!#-~é€àüÿŠ]{0,24}"
    } else {
        "[ -!#-~é€日本@ü\u{1F600}]{0,24}"
    };
    proptest::string::string_regex(pattern).unwrap()
}

fn name(cp1252: bool) -> impl Strategy<Value = String> {
    text(cp1252).prop_filter("non-empty", |s| !s.is_empty())
}

fn key() -> impl Strategy<Value = String> {
    "[A-Za-z][A-Za-z0-9._:-]{0,20}"
}

fn extent(cp1252: bool) -> impl Strategy<Value = ExtentLine> {
    let access = prop_oneof![
        Just(Access::ReadWrite),
        Just(Access::ReadOnly),
        Just(Access::NoAccess)
    ];
    let kind = prop_oneof![
        Just(ExtentType::Flat),
        Just(ExtentType::Sparse),
        Just(ExtentType::Zero),
        Just(ExtentType::Vmfs),
        Just(ExtentType::VmfsSparse),
        Just(ExtentType::VmfsRdm),
        Just(ExtentType::VmfsRaw),
        Just(ExtentType::SeSparse),
    ];
    (
        access,
        any::<u64>(),
        kind,
        name(cp1252),
        proptest::option::of(any::<u64>()),
        proptest::collection::vec(text(cp1252), 0..=2),
    )
        .prop_map(|(access, sectors, kind, file, offset, extra)| {
            if kind == ExtentType::Zero {
                ExtentLine {
                    access,
                    sectors,
                    kind,
                    file: None,
                    offset: None,
                    extra: vec![],
                }
            } else {
                let extra = if offset.is_some() { extra } else { vec![] };
                ExtentLine {
                    access,
                    sectors,
                    kind,
                    file: Some(file),
                    offset,
                    extra,
                }
            }
        })
}

fn unique_by_lowercase(v: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    v.into_iter()
        .filter(|(k, _)| seen.insert(k.to_ascii_lowercase()))
        .collect()
}

const RESERVED: [&str; 8] = [
    "version",
    "encoding",
    "cid",
    "parentcid",
    "isnativesnapshot",
    "createtype",
    "parentfilenamehint",
    "changetrackpath",
];

fn descriptor() -> impl Strategy<Value = Descriptor> {
    prop_oneof![
        Just(None),
        Just(Some(Encoding::Utf8)),
        Just(Some(Encoding::Windows1252))
    ]
    .prop_flat_map(|encoding| {
        let cp = encoding == Some(Encoding::Windows1252);
        (
            1u32..=3,
            any::<u32>(),
            any::<u32>(),
            proptest::sample::select(CreateType::ALL.to_vec()),
            proptest::option::of(text(cp)),
            proptest::option::of(text(cp)),
            proptest::option::of(text(cp)),
            proptest::collection::vec((key(), text(cp)), 0..4),
            proptest::collection::vec(extent(cp), 1..6),
            proptest::collection::vec((key(), text(cp)), 0..6),
        )
            .prop_map(
                move |(
                    version,
                    cid,
                    parent_cid,
                    create_type,
                    nat,
                    hint,
                    ctk,
                    extra,
                    extents,
                    ddb,
                )| {
                    let extra_header = unique_by_lowercase(
                        extra
                            .into_iter()
                            .filter(|(k, _)| {
                                let l = k.to_ascii_lowercase();
                                !RESERVED.contains(&l.as_str()) && !l.starts_with("ddb.")
                            })
                            .collect(),
                    );
                    let ddb = unique_by_lowercase(
                        ddb.into_iter()
                            .map(|(k, v)| (format!("ddb.{k}"), v))
                            .collect(),
                    );
                    Descriptor {
                        version,
                        encoding,
                        cid,
                        parent_cid,
                        create_type,
                        is_native_snapshot: nat,
                        parent_file_name_hint: hint,
                        change_track_path: ctk,
                        extra_header,
                        extents,
                        ddb,
                    }
                },
            )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn parse_of_serialize_is_identity(d in descriptor()) {
        let bytes = d.to_bytes().expect("generated descriptors are serialisable");
        let back = Descriptor::parse(&bytes).expect("serialised descriptors parse");
        prop_assert_eq!(back, d);
    }

    #[test]
    fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut input = b"# Disk DescriptorFile\n".to_vec();
        input.extend(bytes);
        let _ = Descriptor::parse(&input);
    }
}
