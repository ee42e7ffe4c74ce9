//! The canonical form (RFC 8785) that signatures cover.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use rollcall_pack::canonical_json;
use serde_json::{Value, json};

fn canonical(value: &Value) -> String {
    String::from_utf8(canonical_json(value).unwrap()).unwrap()
}

fn canonical_text(text: &str) -> String {
    canonical(&serde_json::from_str(text).unwrap())
}

/// Doubles given by their bit patterns, at the edges of ECMAScript's number formatting, and
/// the strings that Number.prototype.toString gives for them in Node.js 20. RFC 8785 writes
/// numbers as that function does.
const NUMBERS: [(u64, &str); 24] = [
    (0x0000000000000000, "0"),
    (0x8000000000000000, "0"),
    (0x0000000000000001, "5e-324"),
    (0x8000000000000001, "-5e-324"),
    (0x7fefffffffffffff, "1.7976931348623157e+308"),
    (0xffefffffffffffff, "-1.7976931348623157e+308"),
    (0x4340000000000000, "9007199254740992"),
    (0xc340000000000000, "-9007199254740992"),
    (0x4430000000000000, "295147905179352830000"),
    (0x44b52d02c7e14af5, "9.999999999999997e+22"),
    (0x44b52d02c7e14af6, "1e+23"),
    (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
    (0x444b1ae4d6e2ef4e, "999999999999999700000"),
    (0x444b1ae4d6e2ef4f, "999999999999999900000"),
    (0x444b1ae4d6e2ef50, "1e+21"),
    (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
    (0x3eb0c6f7a0b5ed8d, "0.000001"),
    (0x41b3de4355555553, "333333333.3333332"),
    (0x41b3de4355555554, "333333333.33333325"),
    (0x41b3de4355555555, "333333333.3333333"),
    (0x41b3de4355555556, "333333333.3333334"),
    (0x41b3de4355555557, "333333333.33333343"),
    (0xbecbf647612f3696, "-0.0000033333333333333333"),
    (0x43143ff3c1cb0959, "1424953923781206.2"),
];

#[test]
fn numbers_are_written_as_ecmascript_does() {
    for (bits, expected) in NUMBERS {
        let number = f64::from_bits(bits);

        let written = canonical(&json!(number));

        assert_eq!(written, expected, "bits {bits:#018x}");
    }
}

#[test]
fn integers_are_written_as_doubles() {
    assert_eq!(canonical(&json!(58)), "58");
    assert_eq!(canonical(&json!(-7)), "-7");
    assert_eq!(canonical(&json!(100.0)), "100");
    assert_eq!(canonical_text("1E30"), "1e+30");
    assert_eq!(canonical_text("4.50"), "4.5");
    assert_eq!(canonical_text("0.002"), "0.002");
}

#[test]
fn rfc_example_is_canonicalised() {
    // The RFC 8785 example of numbers, string escapes and literals. The expected text is what
    // Node.js 20 writes for it with the members sorted.
    let input = r#"{
        "numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
        "literals": [null, true, false]
    }"#;

    let written = canonical_text(input);

    assert_eq!(
        written,
        r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#
    );
}

#[test]
fn keys_are_sorted_by_utf16_code_units() {
    // The RFC 8785 sorting example. U+1F600 sorts before U+FB33 because its UTF-16 form
    // starts with the surrogate 0xD83D.
    let input = r#"{
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\ud83d\ude00": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis"
    }"#;

    let written = canonical_text(input);

    let value: serde_json::Map<String, Value> = serde_json::from_str(&written).unwrap();
    let order: Vec<Vec<u32>> = written_key_order(&written, &value);
    assert_eq!(
        order,
        [
            vec![0x0d],
            vec![0x31],
            vec![0x80],
            vec![0xf6],
            vec![0x20ac],
            vec![0x1f600],
            vec![0xfb33]
        ]
    );
}

/// Returns the member names of `value` in the order they appear in `text`, as code points.
fn written_key_order(text: &str, value: &serde_json::Map<String, Value>) -> Vec<Vec<u32>> {
    let mut names: Vec<(usize, &String)> = value
        .keys()
        .map(|name| {
            let quoted = format!("{}:", serde_json::to_string(name).unwrap());
            (text.find(&quoted).unwrap(), name)
        })
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|(_, name)| name.chars().map(u32::from).collect())
        .collect()
}

#[test]
fn nested_objects_are_sorted_and_arrays_keep_order() {
    let input = r#"{"b": [3, 1, {"z": 1, "a": 2}], "a": {"d": null, "c": "x"}}"#;

    let written = canonical_text(input);

    assert_eq!(
        written,
        r#"{"a":{"c":"x","d":null},"b":[3,1,{"a":2,"z":1}]}"#
    );
}

#[test]
fn whitespace_between_tokens_is_removed() {
    let written = canonical_text("{ \"a\" :\n [ 1 ,\t2 ] }");

    assert_eq!(written, r#"{"a":[1,2]}"#);
}

/// JSON values of limited depth, with numbers that survive a text round trip.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i32>().prop_map(Value::from),
        (-1.0e12f64..1.0e12).prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((".{0,8}", inner), 0..6)
                .prop_map(|members| Value::Object(members.into_iter().collect())),
        ]
    })
}

/// Writes `members` as a JSON object in the order given.
fn object_text(members: &[(String, Value)]) -> String {
    let written: Vec<String> = members
        .iter()
        .map(|(name, value)| format!("{}:{}", serde_json::to_string(name).unwrap(), value))
        .collect();
    format!("{{{}}}", written.join(","))
}

proptest! {
    #[test]
    fn canonicalising_is_idempotent(value in json_value()) {
        let once = canonical(&value);

        let twice = canonical_text(&once);

        prop_assert_eq!(twice, once);
    }

    #[test]
    fn member_order_does_not_matter(
        members in prop::collection::btree_map(".{0,8}", json_value(), 0..8),
        seed in any::<u64>(),
    ) {
        let forward: Vec<(String, Value)> = members.into_iter().collect();
        let mut shuffled = forward.clone();
        shuffled.reverse();
        if !shuffled.is_empty() {
            let turn = usize::try_from(seed % shuffled.len() as u64).unwrap();
            shuffled.rotate_left(turn);
        }

        let from_forward = canonical_text(&object_text(&forward));
        let from_shuffled = canonical_text(&object_text(&shuffled));

        prop_assert_eq!(from_forward, from_shuffled);
    }
}
