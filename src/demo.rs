//! The quickstart's Service B as a gRPC upstream: `demo.flights.v1.FlightService`, with its
//! Rust code generated from `proto/demo/flights/v1/flights.proto` (by `build.rs`). It trusts
//! what onbehalf put in front of it: the identity headers say for whom and by whom a flight
//! is booked. `cargo run --example flights -- serve` serves it; the tests run it in-process.

use std::future::Future;

use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// The generated messages, server and client of `demo.flights.v1`.
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
pub mod flights {
    tonic::include_proto!("demo.flights.v1");
}

use flights::flight_service_server::{FlightService, FlightServiceServer};
use flights::{
    BookFlightRequest, BookFlightResponse, Flight, ListFlightsRequest, ListFlightsResponse,
};

/// The airline's booking desk: a fixed timetable, and bookings it answers without storing.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlightDesk;

/// The timetable: flight, origin, destination, price in EUR.
const TIMETABLE: &[(&str, &str, &str, f64)] = &[
    ("OB101", "CDG", "JFK", 612.0),
    ("OB102", "JFK", "CDG", 598.0),
    ("OB205", "CDG", "LHR", 142.0),
    ("OB771", "CDG", "NRT", 1480.0),
];

#[tonic::async_trait]
impl FlightService for FlightDesk {
    async fn book_flight(
        &self,
        request: Request<BookFlightRequest>,
    ) -> Result<Response<BookFlightResponse>, Status> {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let booked_for = header("x-onbehalf-subject");
        let booked_by = header("x-onbehalf-actor");
        let booking = request.into_inner();
        let Some((.., fare)) = TIMETABLE.iter().find(|(f, ..)| *f == booking.flight) else {
            return Err(Status::not_found(format!("no flight {}", booking.flight)));
        };
        // The price in the message is what the agent pays (and what policy judged): never
        // less than the fare.
        if booking.price < *fare {
            return Err(Status::failed_precondition(format!(
                "the fare of {} is {fare} EUR",
                booking.flight
            )));
        }
        Ok(Response::new(BookFlightResponse {
            booking_id: crate::ids::random_id(),
            passenger: booking.passenger,
            flight: booking.flight,
            booked_for,
            booked_by,
        }))
    }

    async fn list_flights(
        &self,
        request: Request<ListFlightsRequest>,
    ) -> Result<Response<ListFlightsResponse>, Status> {
        let query = request.into_inner();
        let matches = |wanted: &str, actual: &str| wanted.is_empty() || wanted == actual;
        let flights = TIMETABLE
            .iter()
            .filter(|(_, from, to, _)| {
                matches(&query.origin, from) && matches(&query.destination, to)
            })
            .map(|(flight, from, to, price)| Flight {
                flight: (*flight).into(),
                origin: (*from).into(),
                destination: (*to).into(),
                price: *price,
                currency: "EUR".into(),
            })
            .collect();
        Ok(Response::new(ListFlightsResponse { flights }))
    }
}

/// Serves the desk on `listener` (HTTP/2 cleartext) until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(FlightServiceServer::new(FlightDesk))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
}
