//! The quickstart's gRPC Service B (`demo.flights.v1.FlightService`, proto/) and a client
//! that books through Envoy:
//!
//!     cargo run --example flights -- serve 127.0.0.1:9091
//!     cargo run --example flights -- book http://127.0.0.1:8000 "$TOKEN" OB101 612
//!
//! `book` calls BookFlight for alice with the given flight and fare, with `TOKEN` as the
//! bearer token, and prints the answer or the gRPC status Envoy returned.

use onbehalf::demo::flights::BookFlightRequest;
use onbehalf::demo::flights::flight_service_client::FlightServiceClient;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", addr] => serve(addr).await,
        ["serve"] => serve("127.0.0.1:9091").await,
        ["book", via, token, flight, price] => book(via, token, flight, price.parse()?).await,
        _ => Err("usage: flights serve [ADDR] | flights book URL TOKEN FLIGHT PRICE".into()),
    }
}

async fn serve(addr: &str) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!(
        "demo.flights.v1.FlightService on {}",
        listener.local_addr()?
    );
    onbehalf::demo::serve(listener, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}

async fn book(
    via: &str,
    token: &str,
    flight: &str,
    price: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    // The authority is the service's name, as inside a mesh (the policy grants to it).
    let channel = tonic::transport::Endpoint::from_shared(via.to_string())?
        .origin("http://service-b".parse()?)
        .connect()
        .await?;
    let mut request = tonic::Request::new(BookFlightRequest {
        passenger: "alice".into(),
        flight: flight.into(),
        price,
        currency: "EUR".into(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    match FlightServiceClient::new(channel).book_flight(request).await {
        Ok(answer) => println!("{:#?}", answer.into_inner()),
        Err(status) => println!("{:?}: {}", status.code(), status.message()),
    }
    Ok(())
}
