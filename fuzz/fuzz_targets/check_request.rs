//! The input builder: any bytes as a protobuf CheckRequest, turned into the input document
//! and decided as the gRPC service decides it. Nothing panics; with no token nothing is
//! allowed.
#![no_main]

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = CheckRequest::decode(data) else {
        return;
    };
    if let Ok(input) = onbehalf::input::CheckInput::try_from(&request) {
        let _ = input.header("authorization");
        let _ = input.path();
    }
    let response = common::respond(&request);
    let has_token = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .is_some_and(|h| {
            h.headers
                .keys()
                .any(|k| k.eq_ignore_ascii_case("authorization"))
                || h.header_map.is_some()
        });
    if !has_token {
        assert!(
            !common::allowed(&response),
            "a request without a token was allowed"
        );
    }
});
