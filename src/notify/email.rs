//! E-mail over SMTP with `lettre` (tokio, rustls on the aws-lc-rs provider, the system's root certificates):
//! STARTTLS required on 587 (the default), implicit TLS on 465, no TLS only when asked (`smtp+plain://`,
//! `?tls=none`: a relay on the same host). One connection per mail, no pool.

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::message::Message;
use super::{is_tls, lowercase_first, with_retries, Failure, REQUEST_TIMEOUT};
use crate::config::{Notify, Smtp, SmtpTls};

/// Send `msg` to the receiver's recipients: the subject is its title, the text its long form (with the JSON
/// summary).
pub(super) async fn send(smtp: &Smtp, n: &Notify, msg: &Message) -> Result<(), String> {
    let host = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    let from = smtp
        .from
        .clone()
        .unwrap_or_else(|| format!("voltar@{host}"));
    let mut b = lettre::Message::builder()
        .from(
            from.parse()
                .map_err(|e| format!("from address `{from}`: {e}"))?,
        )
        .subject(msg.title.clone())
        .header(ContentType::TEXT_PLAIN);
    for to in &smtp.to {
        b = b.to(to.parse().map_err(|e| format!("address `{to}`: {e}"))?);
    }
    let mail = b
        .body(msg.long.clone())
        .map_err(|e| format!("cannot build the mail: {e}"))?;

    let tls = match smtp.tls {
        SmtpTls::None => Tls::None,
        SmtpTls::StartTls | SmtpTls::Implicit => {
            let p = TlsParameters::new(smtp.host.clone())
                .map_err(|e| format!("tls setup for {}: {e}", smtp.host))?;
            if smtp.tls == SmtpTls::StartTls {
                Tls::Required(p)
            } else {
                Tls::Wrapper(p)
            }
        }
    };
    let mut t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.clone())
        .port(smtp.port)
        .tls(tls)
        .timeout(Some(REQUEST_TIMEOUT));
    if let Some(user) = &smtp.user {
        let password = n
            .password
            .as_ref()
            .map(|p| p.expose().to_string())
            .unwrap_or_default();
        t = t.credentials(Credentials::new(user.clone(), password));
    }
    let transport = t.build();
    let receiver = n.url.to_string();
    with_retries(&receiver, || {
        let mail = mail.clone();
        let transport = &transport;
        async move {
            match transport.send(mail).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    // lettre says "Connection error" and so does its io::Error inside: once is enough.
                    let text = lowercase_first(&e.to_string())
                        .replace("connection error: Connection error: ", "connection error: ");
                    if e.is_permanent() || e.is_tls() || is_tls(&e) {
                        Err(Failure::Permanent(format!("smtp: {text}")))
                    } else {
                        Err(Failure::Transient(format!("smtp: {text}")))
                    }
                }
            }
        }
    })
    .await
}
