//! The `json` module (SPEC §4).

use crate::helpers::*;

#[test]
fn int64_ids_beyond_2_pow_53_round_trip_exactly() {
    let webhook = Webhook::payload(
        br#"{"id":9007199254740993,"max":9223372036854775807,"min":-9223372036854775808}"#.to_vec(),
    );
    let request = run_on(
        &mut engine(),
        "local d = json.decode(payload) request.body = json.encode({id = d.id, max = d.max, min = d.min}) \
         headers['X-Type'] = math.type(d.id)",
        &webhook,
    )
    .unwrap();
    let body: serde_json::Value = serde_json::from_slice(request.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["id"].as_u64(), Some(9_007_199_254_740_993));
    assert_eq!(body["max"].as_i64(), Some(i64::MAX));
    assert_eq!(body["min"].as_i64(), Some(i64::MIN));
    assert_eq!(header(&request, "X-Type"), Some("integer"));
}

#[test]
fn integers_beyond_int64_become_floats() {
    assert_eq!(
        body_of("request.body = math.type(json.decode('18446744073709551615'))"),
        "float"
    );
}

#[test]
fn null_sentinel_round_trips() {
    assert_eq!(
        body_of(
            "local d = json.decode('{\"a\":null}') request.body = tostring(d.a == json.null) .. json.encode(d)"
        ),
        "true{\"a\":null}"
    );
}

#[test]
fn decoded_arrays_stay_arrays_and_empty_tables_are_objects() {
    assert_eq!(
        body_of("request.body = json.encode(json.decode('{\"a\":[],\"b\":{}}').a)"),
        "[]"
    );
    assert_eq!(body_of("request.body = json.encode({})"), "{}");
    assert_eq!(body_of("request.body = json.encode(json.array({}))"), "[]");
    assert_eq!(
        body_of("request.body = json.encode({list = json.empty_array})"),
        "{\"list\":[]}"
    );
    assert_eq!(body_of("request.body = json.encode({1, 2, 3})"), "[1,2,3]");
    assert_eq!(
        body_of("request.body = json.encode(json.decode('[[1],[2,[3]]]'))"),
        "[[1],[2,[3]]]"
    );
}

#[test]
fn empty_array_sentinel_is_read_only() {
    let error = run("json.empty_array[1] = 'x'").unwrap_err();
    assert!(error.message.contains("read-only"), "{error}");
    let error = run("rawset(json.empty_array, 1, 'x')").unwrap_err();
    assert!(error.message.contains("read-only"), "{error}");
}

#[test]
fn strings_and_escapes_round_trip() {
    let webhook = Webhook::payload(r#"{"s":"é \u00e9 \"q\" \n \u2028 😀"}"#.as_bytes().to_vec());
    let request = run_on(
        &mut engine(),
        "request.body = json.encode(json.decode(payload))",
        &webhook,
    )
    .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&request.body.unwrap()).unwrap();
    assert_eq!(body["s"], "é é \"q\" \n \u{2028} 😀");
}

#[test]
fn floats_stay_numbers() {
    assert_eq!(
        body_of("request.body = json.encode(json.decode('[1.5, -0.25, 1e300]'))"),
        "[1.5,-0.25,1e+300]"
    );
}

#[test]
fn decode_errors_return_nil_and_message() {
    assert_eq!(
        body_of("local v, err = json.decode('{bad') request.body = tostring(v) .. '|' .. err"),
        "nil|key must be a string at line 1 column 2"
    );
    assert_eq!(
        body_of("local v, err = json.decode('{} extra') request.body = tostring(v) .. '|' .. err"),
        "nil|trailing characters at line 1 column 4"
    );
    assert_eq!(
        body_of("local v, err = json.decode(nil) request.body = err"),
        "json.decode expects a string, got nil"
    );
}

#[test]
fn encode_errors_return_nil_and_message() {
    for (value, needle) in [
        ("function() end", "cannot encode a function"),
        ("{[true] = 1}", "boolean keys"),
        ("'\\255'", "not valid UTF-8"),
        ("0/0", "cannot encode"),
        ("math.huge", "cannot encode"),
    ] {
        let body = body_of(&format!(
            "local v, err = json.encode({value}) request.body = tostring(v) .. '|' .. err"
        ));
        assert!(
            body.starts_with("nil|") && body.contains(needle),
            "{value}: {body}"
        );
    }
}

#[test]
fn cyclic_tables_fail_cleanly() {
    let body = body_of("local t = {} t.self = t local v, err = json.encode(t) request.body = err");
    assert!(body.contains("nested deeper than 128"), "{body}");
}

#[test]
fn mixed_tables_encode_as_objects_with_string_keys() {
    let body = body_of("request.body = json.encode({1, 2, x = 3})");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(value, serde_json::json!({"1": 1, "2": 2, "x": 3}));
}
