use super::{
    adds::batch_body,
    baseline::{IpsetSet, NftSet},
    report::percentile,
};

#[test]
fn percentiles_use_the_nearest_rank() {
    let sorted: Vec<f64> = (1..=1000).map(f64::from).collect();
    assert_eq!(percentile(&sorted, 50.0), 500.0);
    assert_eq!(percentile(&sorted, 99.0), 990.0);
    assert_eq!(percentile(&[7.0], 99.0), 7.0);
}

#[test]
fn the_batch_body_is_the_documented_json() {
    let body = batch_body(&["192.0.2.0/24".into(), "198.51.100.7/32".into()]);
    let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"rules": [{"cidr": "192.0.2.0/24"}, {"cidr": "198.51.100.7/32"}]})
    );
}

#[test]
fn baseline_scripts_name_their_set() {
    let entries = vec!["192.0.2.0/24".to_string(), "198.51.100.7/32".to_string()];
    assert_eq!(
        IpsetSet::restore_script("s", &entries),
        "add s 192.0.2.0/24\nadd s 198.51.100.7/32\n"
    );
    assert_eq!(
        NftSet::element_script("t", "s", &entries),
        "add element inet t s { 192.0.2.0/24, 198.51.100.7/32 }\n"
    );
}
