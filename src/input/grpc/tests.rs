use prost::Message;

use super::*;
use crate::demo::flights::BookFlightRequest;

fn repo_proto() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("proto")
}

fn frame(compressed: u8, message: &[u8]) -> Vec<u8> {
    let mut out = vec![compressed];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn booking() -> Vec<u8> {
    BookFlightRequest {
        passenger: "alice".into(),
        flight: "OB101".into(),
        price: 612.5,
        currency: "EUR".into(),
    }
    .encode_to_vec()
}

const BOOK: [&str; 2] = ["demo.flights.v1.FlightService", "BookFlight"];

#[test]
fn a_call_is_decoded_as_protobuf_json_by_its_method() {
    let bodies = GrpcBodies::load(&[repo_proto()]).expect("loads");
    assert!(
        bodies
            .methods()
            .contains(&"/demo.flights.v1.FlightService/BookFlight".to_string())
    );
    let body = bodies
        .decode(&BOOK, &frame(0, &booking()))
        .expect("decodes");
    let expected = serde_json::json!({
        "passenger": "alice", "flight": "OB101", "price": 612.5, "currency": "EUR"
    });
    assert_eq!(body, GrpcBody::Parsed(Value::from(expected)));
    // Default values are left out, as protojson writes them.
    let empty = bodies.decode(&BOOK, &frame(0, &[])).expect("decodes");
    assert_eq!(empty, GrpcBody::Parsed(Value::from(serde_json::json!({}))));
}

#[test]
fn what_cannot_be_decoded_is_null_truncated_or_refused() {
    let bodies = GrpcBodies::load(&[repo_proto()]).expect("loads");
    let message = booking();
    let unknown = |path: [&str; 2]| bodies.decode(&path, &frame(0, &message));
    assert_eq!(
        unknown(["demo.flights.v1.FlightService", "CancelFlight"]),
        Ok(GrpcBody::Unknown)
    );
    assert_eq!(
        unknown(["demo.flights.v1.Other", "BookFlight"]),
        Ok(GrpcBody::Unknown)
    );
    // Compressed messages are not decoded (as OPA-Envoy).
    assert_eq!(
        bodies.decode(&BOOK, &frame(1, &message)),
        Ok(GrpcBody::Unknown)
    );
    // Envoy cut the body inside the first message.
    let whole = frame(0, &message);
    assert_eq!(
        bodies.decode(&BOOK, &whole[..whole.len() - 1]),
        Ok(GrpcBody::Truncated)
    );
    assert_eq!(
        bodies.decode(&BOOK, &whole[..4]),
        Err(InputError::GrpcFrame)
    );
    assert_eq!(
        bodies.decode(&["demo.flights.v1.FlightService"], &whole),
        Err(InputError::GrpcPath)
    );
    assert_eq!(
        bodies.decode(&["a", "b", "c"], &whole),
        Err(InputError::GrpcPath)
    );
    // Field 1 with wire type 7 does not exist.
    assert_eq!(
        bodies.decode(&BOOK, &frame(0, &[0x0f, 0x01])),
        Err(InputError::GrpcMessage)
    );
}

#[test]
fn descriptors_load_from_a_proto_file_or_a_descriptor_set() {
    let dir = tempfile::tempdir().expect("tmp");
    let proto = dir.path().join("pets.proto");
    std::fs::write(
        &proto,
        "syntax = \"proto3\";\npackage pets;\nimport \"google/protobuf/timestamp.proto\";\n\
         service Shop { rpc Buy(Order) returns (Order); rpc Stream(stream Order) returns (Order); }\n\
         message Order { int64 quantity = 1; google.protobuf.Timestamp at = 2; }\n",
    )
    .expect("write");
    let set = protox::compile([&proto], [dir.path()]).expect("compiles");
    let binary = dir.path().join("pets.pb");
    std::fs::write(&binary, set.encode_to_vec()).expect("write");
    for source in [&proto, &binary] {
        let bodies = GrpcBodies::load(std::slice::from_ref(source)).expect("loads");
        // quantity = 7 (int64: a string in protobuf JSON).
        let body = bodies.decode(&["pets.Shop", "Buy"], &frame(0, &[0x08, 0x07]));
        assert_eq!(
            body,
            Ok(GrpcBody::Parsed(Value::from(
                serde_json::json!({"quantity": "7"})
            ))),
            "{}",
            source.display()
        );
        // Client-streaming methods are not decoded (as OPA-Envoy).
        assert_eq!(
            bodies.decode(&["pets.Shop", "Stream"], &frame(0, &[0x08, 0x07])),
            Ok(GrpcBody::Unknown)
        );
    }
}

#[test]
fn a_source_that_does_not_load_names_itself() {
    let dir = tempfile::tempdir().expect("tmp");
    let missing = dir.path().join("missing.proto");
    let err = GrpcBodies::load(&[missing]).unwrap_err().to_string();
    assert!(err.contains("missing.proto: cannot be read"), "{err}");

    let broken = dir.path().join("broken.proto");
    std::fs::write(&broken, "syntax = \"proto3\";\nmessage {\n").expect("write");
    let err = GrpcBodies::load(&[broken]).unwrap_err().to_string();
    assert!(err.contains("broken.proto"), "{err}");

    let garbage = dir.path().join("set.pb");
    std::fs::write(&garbage, b"\xff\xff\xff").expect("write");
    let err = GrpcBodies::load(&[garbage]).unwrap_err().to_string();
    assert!(err.contains("set.pb: not a FileDescriptorSet"), "{err}");

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let err = GrpcBodies::load(&[empty]).unwrap_err().to_string();
    assert!(err.contains("holds no .proto files"), "{err}");
}
