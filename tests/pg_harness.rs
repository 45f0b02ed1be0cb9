//! The throwaway PostgreSQL harness (`common::pg`) works: servers start, answer,
//! keep committed data across a restart, and run side by side.

mod common;

use common::pg::TestPostgres;

#[tokio::test]
async fn server_answers_and_keeps_data_across_restart() {
    let pg = TestPostgres::start().await;
    assert_eq!(pg.psql("SELECT 1"), "1");
    assert_eq!(
        pg.url(),
        format!("postgres://tandem@127.0.0.1:{}/tandem", pg.port())
    );
    assert_eq!(pg.psql("SELECT current_database()"), "tandem");

    pg.psql("CREATE TABLE registrations (aor text PRIMARY KEY, contact text NOT NULL)");
    pg.psql("INSERT INTO registrations VALUES ('sip:alice@example.com', 'sip:alice@10.0.0.1')");

    let port = pg.port();
    pg.restart();
    assert_eq!(pg.port(), port, "restart keeps the port");
    assert_eq!(
        pg.psql("SELECT aor || ' ' || contact FROM registrations"),
        "sip:alice@example.com sip:alice@10.0.0.1"
    );

    // The same through the async variants, which leave the runtime free.
    pg.stop_async().await;
    pg.start_again_async().await;
    assert_eq!(
        pg.psql_async("SELECT count(*) FROM registrations").await,
        "1"
    );
}

#[tokio::test]
async fn two_servers_run_side_by_side() {
    let (a, b) = tokio::join!(TestPostgres::start(), TestPostgres::start());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());

    a.psql("CREATE TABLE only_in_a (x int)");
    assert_eq!(a.psql("SELECT 1"), "1");
    assert_eq!(b.psql("SELECT 2"), "2");
    assert_eq!(
        b.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'"),
        "0",
        "the servers are separate"
    );

    let (dir_a, dir_b) = (a.dir().to_path_buf(), b.dir().to_path_buf());
    drop(a);
    drop(b);
    assert!(
        !dir_a.exists() && !dir_b.exists(),
        "drop removes the directories"
    );
}
