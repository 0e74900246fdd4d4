//! One authorizer for every input: the shipped policy, the fixture issuer's JWKS from a file.

use std::sync::OnceLock;

use envoy_types::ext_authz::v3::pb::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use onbehalf::pipeline::Authorizer;

pub const ISSUER: &str = "https://idp.fuzz";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    authorizer: Authorizer,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let yaml = format!(
            "policy:\n  dir: {repo}/policies\nlog:\n  level: error\n\
             authn:\n  issuers:\n    - issuer: {ISSUER}\n      audiences: [service-b]\n      \
             jwks_file: {repo}/benches/jwks.json\n"
        );
        let config = onbehalf::config::Config::from_yaml(
            &onbehalf::config::Source::Embedded,
            &yaml,
            std::iter::empty::<(String, String)>(),
        )
        .expect("the fuzz configuration is valid");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let authorizer = runtime.block_on(async {
            let (authorizer, source) =
                onbehalf::app::build_authorizer(&config).expect("authorizer");
            onbehalf::app::load_once(&authorizer, &source, &config)
                .await
                .expect("policy and keys load");
            authorizer
        });
        Fixture {
            runtime,
            authorizer,
        }
    })
}

/// The whole Check for `request`, as the gRPC service answers it.
pub fn respond(request: &CheckRequest) -> CheckResponse {
    let f = fixture();
    f.runtime
        .block_on(onbehalf::grpc::respond(&f.authorizer, request))
        .0
}

/// Whether `response` lets the request through.
pub fn allowed(response: &CheckResponse) -> bool {
    use envoy_types::ext_authz::v3::pb::HttpResponse;
    matches!(response.http_response, Some(HttpResponse::OkResponse(_)))
}
