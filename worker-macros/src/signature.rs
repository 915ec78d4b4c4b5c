//! The shape a task fn must have: a free, non-generic `async fn` taking the payload and optionally a
//! `TaskContext`, returning `Result<T, E>`. Every deviation becomes an error at its own token.
//! What only the type checker can tell (the payload decodes, the future is `Send`, `E` converts into
//! `TaskError`) is checked by the expansion, at the user's spans.

use quote::ToTokens;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemFn, PathArguments, ReturnType, Signature, Type,
    Visibility,
};

use crate::errors::Errors;

/// A task fn whose signature has the required shape.
pub(crate) struct Handler<'a> {
    /// The fn's name.
    pub name: &'a Ident,
    /// The fn's visibility.
    pub vis: &'a Visibility,
    /// The first parameter's type.
    pub payload: &'a Type,
    /// The second parameter's type, if there is one.
    pub context: Option<&'a Type>,
    /// `T` of `Result<T, E>`.
    pub output: &'a Type,
    /// `E` of `Result<T, E>`, if written (a `Result<T>` alias names only `T`).
    pub error: Option<&'a Type>,
    /// The fn's `#[cfg(..)]` attributes, which the generated items must share.
    pub cfgs: Vec<&'a Attribute>,
}

/// Checks the signature of `item`, adding every problem to `errors`.
pub(crate) fn check<'a>(item: &'a ItemFn, errors: &mut Errors) -> Option<Handler<'a>> {
    let mut found = Errors::default();
    let sig = &item.sig;
    check_qualifiers(sig, &mut found);
    let (payload, context) = check_parameters(sig, &mut found);
    let result = check_return_type(sig, &mut found);
    match (found.into_error(), payload, result) {
        (None, Some(payload), Some((output, error))) => Some(Handler {
            name: &sig.ident,
            vis: &item.vis,
            payload,
            context,
            output,
            error,
            cfgs: item
                .attrs
                .iter()
                .filter(|attr| attr.path().is_ident("cfg"))
                .collect(),
        }),
        (error, _, _) => {
            if let Some(error) = error {
                errors.push(error);
            }
            None
        }
    }
}

/// `async`, and none of `const`, `unsafe`, `extern`, generics or variadics.
fn check_qualifiers(sig: &Signature, found: &mut Errors) {
    if let Some(constness) = &sig.constness {
        found.spanned(constness, "a task fn cannot be `const`");
    }
    if sig.asyncness.is_none() {
        found.spanned(
            sig.fn_token,
            format!("a task fn must be `async`: write `async fn {}`", sig.ident),
        );
    }
    if let Some(unsafety) = &sig.unsafety {
        found.spanned(unsafety, "a task fn cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        found.spanned(abi, "a task fn cannot have an `extern` ABI");
    }
    if !sig.generics.params.is_empty() {
        found.spanned(
            &sig.generics,
            "a task fn cannot be generic: the worker needs one concrete payload type",
        );
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        found.spanned(where_clause, "a task fn cannot have a `where` clause");
    }
    if let Some(variadic) = &sig.variadic {
        found.spanned(variadic, "a task fn cannot be variadic");
    }
}

/// The payload's type and the context's, if the parameters are one or two and none is `self`.
fn check_parameters<'a>(
    sig: &'a Signature,
    found: &mut Errors,
) -> (Option<&'a Type>, Option<&'a Type>) {
    let mut types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => found.spanned(
                receiver,
                "a task is a free fn: it cannot take `self`; move it out of the `impl` block",
            ),
            FnArg::Typed(parameter) => types.push(&*parameter.ty),
        }
    }
    if sig.inputs.is_empty() {
        found.at(
            sig.paren_token.span.join(),
            "a task fn takes the payload as its first parameter, e.g. `(event: MyEvent)`",
        );
    } else if sig.inputs.len() > 2 {
        let extra: Vec<&FnArg> = sig.inputs.iter().skip(2).collect();
        found.spanned(
            quote::quote!(#(#extra),*),
            "a task fn takes at most two parameters: the payload and a `TaskContext`",
        );
    }
    let payload = types.first().copied();
    if let Some(payload) = payload {
        if let Some(problem) = not_owned(payload) {
            found.spanned(
                payload,
                format!("the payload is decoded into a value the task owns: {problem}"),
            );
        }
    }
    (payload, types.get(1).copied())
}

/// `T` and `E` of the `Result<T, E>` the fn returns.
fn check_return_type<'a>(
    sig: &'a Signature,
    found: &mut Errors,
) -> Option<(&'a Type, Option<&'a Type>)> {
    let ReturnType::Type(_, ty) = &sig.output else {
        found.at(
            sig.paren_token.span.close(),
            "a task fn must return `Result<T, E>`, e.g. `-> Result<(), TaskError>`",
        );
        return None;
    };
    let Some((output, error)) = result_types(ty) else {
        found.spanned(
            ty,
            "a task fn must return `Result<T, E>` where `T: Serialize` (or `()`) and \
             `E` converts into `TaskError`",
        );
        return None;
    };
    if let Some(problem) = not_owned(output) {
        found.spanned(
            output,
            format!("the output of a task must be a named, owned type: {problem}"),
        );
    }
    Some((output, error))
}

/// `T` and `E` of `Result<T, E>` (`E` absent for a `Result<T>` alias such as `io::Result<T>`).
fn result_types(ty: &Type) -> Option<(&Type, Option<&Type>)> {
    let Type::Path(path) = ungroup(ty) else {
        return None;
    };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(arguments) = &last.arguments else {
        return None;
    };
    let mut types = Vec::new();
    for argument in &arguments.args {
        match argument {
            GenericArgument::Type(ty) => types.push(ty),
            _ => return None,
        }
    }
    match types[..] {
        [output] => Some((output, None)),
        [output, error] => Some((output, Some(error))),
        _ => None,
    }
}

/// Why a payload or output type cannot be an associated type of the task, if it cannot.
fn not_owned(ty: &Type) -> Option<String> {
    match ungroup(ty) {
        Type::Reference(reference) => {
            let is_static = reference
                .lifetime
                .as_ref()
                .is_some_and(|lifetime| lifetime.ident == "static");
            let owned = match ungroup(&reference.elem) {
                Type::Path(path) if path.path.is_ident("str") => "String".to_owned(),
                Type::Slice(slice) => format!("Vec<{}>", slice.elem.to_token_stream()),
                elem => elem.to_token_stream().to_string(),
            };
            (!is_static).then(|| format!("take `{owned}`, not a reference"))
        }
        Type::ImplTrait(_) => Some("name the type instead of `impl Trait`".to_owned()),
        Type::Infer(_) => Some("name the type instead of `_`".to_owned()),
        _ => None,
    }
}

/// The type without invisible groups and parentheses.
fn ungroup(ty: &Type) -> &Type {
    match ty {
        Type::Group(group) => ungroup(&group.elem),
        Type::Paren(paren) => ungroup(&paren.elem),
        other => other,
    }
}
