//! Unit tests of [`super`].

use super::*;

#[test]
fn members_are_appended_byte_for_byte() {
    let event = br#"{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"a"}  "#;
    let out = with_member(event, "Data", br#"{"ListPrice": 1.50}"#);
    assert_eq!(
        &out[..],
        br#"{"EntityEventSequence":1,"ResourceName":"Property","ResourceRecordKey":"a","Data":{"ListPrice": 1.50}}"#
    );
    assert_eq!(&with_member(b"{ }", "x", b"1")[..], b"{ \"x\":1}");
}

#[test]
fn a_reso_style_400_can_mean_gone() {
    let mut config: HydrateConfig = toml::from_str(
        "url_template = \"https://x.example/{ResourceName}('{ResourceRecordKey}')\"",
    )
    .unwrap();
    config.validate().unwrap();
    let reso_400 = br#"{"error":{"code":"400","message":"The record is No Longer Available."}}"#;
    assert!(is_gone(&config, 404, b""));
    assert!(is_gone(&config, 410, b""));
    assert!(!is_gone(&config, 400, reso_400), "only when configured");
    config.gone_400_contains = Some("no longer available".into());
    assert!(is_gone(&config, 400, reso_400));
    assert!(!is_gone(&config, 400, b"{\"error\":\"bad $select\"}"));
    assert!(!is_gone(&config, 403, reso_400));
}

#[test]
fn the_probe_sees_data_even_when_null() {
    let p: Probe = serde_json::from_slice(br#"{"Data":null,"ResourceRecordUrl":"u"}"#).unwrap();
    assert!(p.data);
    let p: Probe = serde_json::from_slice(br#"{"EntityEventSequence":1}"#).unwrap();
    assert!(!p.data && p.url.is_none());
}
