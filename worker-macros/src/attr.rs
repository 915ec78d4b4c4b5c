//! The syntax of the attribute's arguments: a comma-separated list of `key = value`, where a value
//! is a literal, a negative number or an array of string literals. Meaning is given in `settings.rs`.

use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, LitStr, Token, UnOp};

/// One `key = value` argument as written.
pub(crate) struct Arg {
    /// The key.
    pub key: Ident,
    /// The value, kept as an expression so that a wrong kind of value can be reported precisely.
    pub value: Expr,
}

impl Parse for Arg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let key: Ident = input.parse()?;
        if !input.peek(Token![=]) {
            return Err(syn::Error::new(
                key.span(),
                format!("expected `{key} = value`"),
            ));
        }
        let eq: Token![=] = input.parse()?;
        if input.is_empty() || input.peek(Token![,]) {
            return Err(syn::Error::new(
                eq.span,
                format!("expected a value after `{key} =`"),
            ));
        }
        let value: Expr = input.parse()?;
        Ok(Arg { key, value })
    }
}

/// Parses the whole argument list.
pub(crate) fn parse_args(input: ParseStream) -> syn::Result<Vec<Arg>> {
    let args = Punctuated::<Arg, Token![,]>::parse_terminated(input)?;
    Ok(args.into_iter().collect())
}

/// A number as written: its magnitude and whether a minus sign precedes it.
pub(crate) enum Number<'a> {
    /// An integer literal.
    Int {
        negative: bool,
        lit: &'a syn::LitInt,
    },
    /// A floating-point literal.
    Float {
        negative: bool,
        lit: &'a syn::LitFloat,
    },
}

/// The expression without invisible groups (left by `macro_rules!` fragments) and parentheses.
fn unwrap(expr: &Expr) -> &Expr {
    match expr {
        Expr::Group(group) => unwrap(&group.expr),
        Expr::Paren(paren) => unwrap(&paren.expr),
        other => other,
    }
}

/// The literal the expression is, if it is one.
fn literal(expr: &Expr) -> Option<&Lit> {
    match unwrap(expr) {
        Expr::Lit(ExprLit { lit, .. }) => Some(lit),
        _ => None,
    }
}

/// The string literal the expression is, if it is one.
pub(crate) fn as_str(expr: &Expr) -> Option<&LitStr> {
    match literal(expr) {
        Some(Lit::Str(lit)) => Some(lit),
        _ => None,
    }
}

/// The number the expression is (an integer or float literal, possibly negated), if it is one.
pub(crate) fn as_number(expr: &Expr) -> Option<Number<'_>> {
    let (negative, inner) = match unwrap(expr) {
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) => (true, &**expr),
        other => (false, other),
    };
    match literal(inner)? {
        Lit::Int(lit) => Some(Number::Int { negative, lit }),
        Lit::Float(lit) => Some(Number::Float { negative, lit }),
        _ => None,
    }
}

/// The elements of an array expression, if the expression is one.
pub(crate) fn as_array(expr: &Expr) -> Option<impl Iterator<Item = &Expr>> {
    match unwrap(expr) {
        Expr::Array(array) => Some(array.elems.iter()),
        _ => None,
    }
}
