//! What the attributes expand to: the user's fn unchanged, a hidden type implementing `Task`, a
//! module named like the fn (its definition, configuration and typed enqueue), and a registration.
//! Generated code names only `::worker_runtime::__private`, `::core` and `::std`.

use std::time::Duration;

use proc_macro2::{Literal, Span, TokenStream};
use quote::{format_ident, quote, quote_spanned, ToTokens};
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{Ident, ItemFn, Path, VisRestricted, Visibility};
use worker_core::{ConsumerType, InitialPosition, TaskKind, DEFAULT_RATE_WINDOW};

use crate::attr;
use crate::errors::Errors;
use crate::settings::{self, Settings};
use crate::signature::{self, Handler};

/// Expands `#[pulsar_io_task(args)]` (`TaskKind::Io`) or `#[pulsar_db_task(args)]` (`TaskKind::Db`)
/// on `item`. On any error the item is emitted unchanged, followed by every error found.
pub(crate) fn task_attribute(kind: TaskKind, args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = match attr::parse_args.parse2(args) {
        Ok(args) => Some(args),
        Err(error) => {
            errors.push(error);
            None
        }
    };
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            let span = item
                .clone()
                .into_iter()
                .next()
                .map_or_else(Span::call_site, |token| token.span());
            errors.at(
                span,
                format!("#[{}] goes on an `async fn`", attribute_name(kind)),
            );
            return with_errors(item, errors.into_error());
        }
    };
    let name = function.sig.ident.unraw().to_string();
    let settings = args.map(|args| settings::read(kind, &name, args, &mut errors));
    let handler = signature::check(&function, &mut errors);
    match (settings, handler, errors.into_error()) {
        (Some(settings), Some(handler), None) => {
            let generated = generate(kind, &handler, &settings);
            quote!(#item #generated)
        }
        (_, _, error) => with_errors(item, error),
    }
}

fn attribute_name(kind: TaskKind) -> &'static str {
    match kind {
        TaskKind::Io => "pulsar_io_task",
        TaskKind::Db => "pulsar_db_task",
    }
}

/// The item unchanged (so that IDEs keep working), then the errors.
fn with_errors(item: TokenStream, error: Option<syn::Error>) -> TokenStream {
    let errors = error.map(|error| error.to_compile_error());
    quote!(#item #errors)
}

/// The items generated beside a valid task fn.
fn generate(kind: TaskKind, handler: &Handler, settings: &Settings) -> TokenStream {
    let p = quote!(::worker_runtime::__private);
    let fn_name = handler.name;
    let name = fn_name.unraw().to_string();
    let task_type = format_ident!("__worker_task_{}", name);
    let vis = handler.vis;
    // `type Payload` keeps the payload type's span, so rustc reports a payload that is not
    // `DeserializeOwned` (or not `Send`) at the fn's parameter; likewise for `Output`.
    let payload = handler.payload;
    let output = handler.output;
    let config = config_body(kind, settings, &p);
    let (context_param, handle) = handle_body(handler, &p);
    let module = module(handler, settings, &task_type, &p);
    // A `#[cfg]` below the attribute removes the fn only after expansion: the items beside it
    // must go with it.
    let cfgs = &handler.cfgs;
    quote! {
        #(#cfgs)*
        #[doc(hidden)]
        #[allow(non_camel_case_types)]
        #[derive(::core::fmt::Debug)]
        #vis struct #task_type;

        #(#cfgs)*
        impl #p::Task for #task_type {
            type Payload = #payload;
            type Output = #output;
            const NAME: &'static str = #name;

            fn config() -> #p::TaskConfig {
                #config
            }

            fn topic() -> ::std::borrow::Cow<'static, #p::Topic> {
                static TOPIC: ::std::sync::OnceLock<#p::Topic> = ::std::sync::OnceLock::new();
                ::std::borrow::Cow::Borrowed(
                    TOPIC.get_or_init(|| <Self as #p::Task>::config().topic),
                )
            }

            fn handle(
                __worker_payload: Self::Payload,
                #context_param: #p::TaskContext,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<Self::Output, #p::TaskError>,
            > + ::core::marker::Send {
                #handle
            }
        }

        #(#cfgs)*
        #module

        #(#cfgs)*
        #p::inventory::submit! {
            #p::Registration::new(#fn_name::task)
        }
    }
}

/// `TaskConfig::new(..)` with every key given set on it.
fn config_body(kind: TaskKind, settings: &Settings, p: &TokenStream) -> TokenStream {
    let kind = match kind {
        TaskKind::Io => quote!(#p::TaskKind::Io),
        TaskKind::Db => quote!(#p::TaskKind::Db),
    };
    let topic = settings
        .topic
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let assignments = config_assignments(settings, p);
    let binding = if assignments.is_empty() {
        quote!(__config)
    } else {
        quote!(mut __config)
    };
    quote! {
        let #binding = #p::TaskConfig::new(
            <Self as #p::Task>::NAME,
            #kind,
            #p::topic(#topic),
        );
        #(#assignments)*
        __config
    }
}

/// The name of `handle`'s context parameter, and `handle`'s body: it calls the user's fn with the
/// payload (and the context) and converts its error.
///
/// Identifiers that carry a user's span are bound and used with that same span, so that they
/// resolve alike whatever hygiene the span has (as when a `macro_rules!` wrote the task).
fn handle_body(handler: &Handler, p: &TokenStream) -> (Ident, TokenStream) {
    let fn_name = handler.name;
    // The context is passed at the second parameter's type: a parameter that is not a
    // `TaskContext` is reported there.
    let (context_param, args) = match handler.context {
        Some(context) => {
            let context_param = Ident::new("__worker_context", context.span());
            let args = quote!(__worker_payload, #context_param);
            (context_param, args)
        }
        None => (
            Ident::new("_worker_context", Span::call_site()),
            quote!(__worker_payload),
        ),
    };
    // The call is checked to be `Send` at the fn's name, where rustc's note on the value held
    // across an `.await` makes sense.
    let call = quote_spanned!(fn_name.span()=> #p::assert_send(#fn_name(#args)));
    // `E` must convert into `TaskError`: checked at `E` (or at the `Result` alias).
    let error_span = handler
        .error
        .map_or_else(|| handler.output.span(), Spanned::span);
    let error_var = Ident::new("__worker_error", error_span);
    let into = quote_spanned! {error_span=>
        ::core::convert::Into::<::worker_runtime::__private::TaskError>::into(#error_var)
    };
    let body = quote! {
        let __worker_future = #call;
        async move {
            match __worker_future.await {
                ::core::result::Result::Ok(__worker_output) => {
                    ::core::result::Result::Ok(__worker_output)
                }
                ::core::result::Result::Err(#error_var) => {
                    ::core::result::Result::Err(#into)
                }
            }
        }
    };
    (context_param, body)
}

/// The module named like the fn: the task's definition, configuration and typed enqueue.
fn module(
    handler: &Handler,
    settings: &Settings,
    task_type: &Ident,
    p: &TokenStream,
) -> TokenStream {
    let fn_name = handler.name;
    let name = fn_name.unraw().to_string();
    let vis = handler.vis;
    let item_vis = inner_visibility(vis);
    let topic = settings
        .topic
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let module_doc =
        format!("Task `{name}` on `{topic}`: its definition, configuration and typed publishing.");
    let type_doc = format!("The type that implements `Task` for `{name}`.");
    quote! {
        #[doc = #module_doc]
        #vis mod #fn_name {
            #[doc = #type_doc]
            #item_vis type Task = super::#task_type;

            /// The payload the task takes, as JSON on the wire.
            #item_vis type Payload = <Task as #p::Task>::Payload;

            /// The task definition, for the worker builder.
            #item_vis fn task() -> #p::TaskDefinition {
                #p::TaskDefinition::of::<Task>()
            }

            /// The configuration the attribute declared, defaults filled in.
            #item_vis fn config() -> #p::TaskConfig {
                <Task as #p::Task>::config()
            }

            /// Publishes a message with this payload to the task's topic; resolves once the
            /// broker confirmed it.
            #item_vis async fn enqueue<P>(
                broker: &dyn #p::Broker,
                payload: &P,
            ) -> ::core::result::Result<#p::MessageId, #p::EnqueueError>
            where
                P: #p::EncodeAs<Payload> + ?::core::marker::Sized,
            {
                #p::Enqueue::<Task>::new(payload).send(broker).await
            }

            /// A message with this payload, to set a delay, a key, properties or an auth token
            /// before `.send(&broker)`.
            #item_vis fn message<P>(payload: &P) -> #p::Enqueue<Task>
            where
                P: #p::EncodeAs<Payload> + ?::core::marker::Sized,
            {
                #p::Enqueue::<Task>::new(payload)
            }
        }
    }
}

/// The visibility of the module's items that makes them as visible as the fn: one module deeper,
/// `super` means one more `super`.
fn inner_visibility(vis: &Visibility) -> TokenStream {
    match vis {
        Visibility::Public(_) => quote!(pub),
        Visibility::Inherited => quote!(pub(super)),
        Visibility::Restricted(restricted) => restricted_inner(restricted),
    }
}

fn restricted_inner(restricted: &VisRestricted) -> TokenStream {
    let path = &restricted.path;
    let first = path
        .segments
        .first()
        .map(|segment| segment.ident.to_string());
    match first.as_deref() {
        // `pub(self)` and `pub(in self::…)`: `self` of the fn's module is `super` of ours.
        Some("self") => {
            let rest = path.segments.iter().skip(1);
            if path.segments.len() == 1 {
                quote!(pub(super))
            } else {
                quote!(pub(in super #(::#rest)*))
            }
        }
        // `pub(super)` and `pub(in super::…)`: one more `super`.
        Some("super") => {
            let path: &Path = path;
            quote!(pub(in super::#path))
        }
        // `pub(crate)` and `pub(in crate::…)` mean the same from anywhere.
        _ => restricted.to_token_stream(),
    }
}

/// One statement per key given, setting it on the `__config` that `TaskConfig::new` made.
fn config_assignments(s: &Settings, p: &TokenStream) -> Vec<TokenStream> {
    let mut out = Vec::new();
    if let Some(dlq) = &s.dlq_topic {
        let dlq = dlq.to_string();
        out.push(quote!(__config.dlq_topic = #p::topic(#dlq);));
    }
    if let Some(subscription) = &s.subscription {
        out.push(quote!(__config.subscription = ::std::string::String::from(#subscription);));
    }
    if let Some(messages) = s.rate_limit {
        let messages = Literal::u32_unsuffixed(messages);
        let window = duration(s.rate_window.unwrap_or(DEFAULT_RATE_WINDOW));
        out.push(quote! {
            __config.rate_limit = ::core::option::Option::Some(#p::RateLimit {
                messages: #messages,
                window: #window,
            });
        });
    }
    if let Some(max_retries) = s.max_retries {
        let max_retries = Literal::u32_unsuffixed(max_retries);
        out.push(quote!(__config.retry.max_retries = #max_retries;));
    }
    if let Some(backoff) = s.backoff {
        let backoff = float(backoff);
        out.push(quote!(__config.retry.backoff = #backoff;));
    }
    if let Some(retry_delay) = s.retry_delay {
        let retry_delay = duration(retry_delay);
        out.push(quote!(__config.retry.retry_delay = #retry_delay;));
    }
    if let Some(max_delay) = s.max_delay {
        let max_delay = duration(max_delay);
        out.push(quote!(__config.retry.max_delay = #max_delay;));
    }
    if let Some(jitter) = s.jitter {
        let jitter = float(jitter);
        out.push(quote!(__config.retry.jitter = #jitter;));
    }
    if let Some(timeout) = s.timeout {
        let timeout = duration(timeout);
        out.push(quote!(__config.timeout = #timeout;));
    }
    if let Some(concurrency) = s.concurrency {
        let concurrency = Literal::usize_unsuffixed(concurrency);
        out.push(quote!(__config.concurrency = #concurrency;));
    }
    if let Some(size) = s.receiver_queue_size {
        let size = Literal::usize_unsuffixed(size);
        out.push(quote!(__config.receiver_queue_size = #size;));
    }
    if let Some(consumer_type) = s.consumer_type {
        let variant = match consumer_type {
            ConsumerType::Shared => quote!(Shared),
            ConsumerType::KeyShared => quote!(KeyShared),
            ConsumerType::Failover => quote!(Failover),
            ConsumerType::Exclusive => quote!(Exclusive),
        };
        out.push(quote!(__config.consumer_type = #p::ConsumerType::#variant;));
    }
    if let Some(position) = s.initial_position {
        let variant = match position {
            InitialPosition::Latest => quote!(Latest),
            InitialPosition::Earliest => quote!(Earliest),
        };
        out.push(quote!(__config.initial_position = #p::InitialPosition::#variant;));
    }
    if let Some(bytes) = s.max_payload_bytes {
        let bytes = Literal::usize_unsuffixed(bytes);
        out.push(quote!(__config.max_payload_bytes = #bytes;));
    }
    if let Some(roles) = &s.permission_roles {
        out.push(quote! {
            __config.permission_roles =
                ::std::vec![#(::std::string::String::from(#roles)),*];
        });
    }
    if let (Some(credit_type), Some(amount)) = (&s.credit_type, s.credit_amount) {
        let amount = Literal::u64_unsuffixed(amount);
        out.push(quote! {
            __config.credits = ::core::option::Option::Some(#p::CreditCost {
                credit_type: ::std::string::String::from(#credit_type),
                amount: #amount,
            });
        });
    }
    if s.rate_limit_scope == Some(worker_core::RateLimitScope::Global) {
        out.push(quote!(__config.rate_limit_scope = #p::RateLimitScope::Global;));
    }
    if let Some(window) = s.idempotency_window {
        let window = duration(window);
        out.push(quote!(__config.idempotency_window = ::core::option::Option::Some(#window);));
    }
    if let Some(circuit) = s.circuit() {
        let option = |value: Option<TokenStream>| match value {
            Some(value) => quote!(::core::option::Option::Some(#value)),
            None => quote!(::core::option::Option::None),
        };
        let failures = option(
            circuit
                .consecutive_failures
                .map(|n| Literal::u32_unsuffixed(n).into_token_stream()),
        );
        let rate = option(circuit.failure_rate.map(float));
        let min_calls = Literal::u32_unsuffixed(circuit.min_calls);
        let window = duration(circuit.window);
        let cooldown = duration(circuit.cooldown);
        let probes = Literal::u32_unsuffixed(circuit.probes);
        out.push(quote! {
            __config.circuit = ::core::option::Option::Some(#p::CircuitPolicy {
                consecutive_failures: #failures,
                failure_rate: #rate,
                min_calls: #min_calls,
                window: #window,
                cooldown: #cooldown,
                probes: #probes,
            });
        });
    }
    out
}

/// A `Duration` expression, exact to the millisecond (the finest unit the attributes accept).
fn duration(duration: Duration) -> TokenStream {
    let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let millis = Literal::u64_unsuffixed(millis);
    quote!(::core::time::Duration::from_millis(#millis))
}

/// An `f64` expression holding exactly `value`.
fn float(value: f64) -> TokenStream {
    if value.is_finite() {
        // `0.0` rather than `-0.0`, which would be two tokens.
        let value = if value == 0.0 { 0.0 } else { value };
        Literal::f64_unsuffixed(value).into_token_stream()
    } else {
        // Validation rejects such values before expansion; stay exact rather than panic anyway.
        let bits = Literal::u64_unsuffixed(value.to_bits());
        quote!(::core::primitive::f64::from_bits(#bits))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner(vis: &str) -> String {
        let vis: Visibility = syn::parse_str(vis).expect("a visibility");
        inner_visibility(&vis).to_string()
    }

    #[test]
    fn module_items_are_exactly_as_visible_as_the_fn() {
        assert_eq!(inner("pub"), "pub");
        assert_eq!(inner(""), "pub (super)");
        assert_eq!(inner("pub(self)"), "pub (super)");
        assert_eq!(inner("pub(crate)"), "pub (crate)");
        assert_eq!(inner("pub(super)"), "pub (in super :: super)");
        assert_eq!(inner("pub(in super::a)"), "pub (in super :: super :: a)");
        assert_eq!(inner("pub(in self::a)"), "pub (in super :: a)");
        assert_eq!(inner("pub(in crate::a::b)"), "pub (in crate :: a :: b)");
    }

    #[test]
    fn durations_and_floats_are_exact() {
        assert_eq!(
            duration(Duration::from_millis(1500)).to_string(),
            ":: core :: time :: Duration :: from_millis (1500)"
        );
        assert_eq!(float(1.5).to_string(), "1.5");
        assert_eq!(float(-0.0).to_string(), "0.0");
    }
}
