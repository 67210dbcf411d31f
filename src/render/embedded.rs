//! The shipped templates compiled into the binary, so `aftercart` works from any
//! directory. A unit test keeps these byte-identical to `templates/` on disk.

/// (name relative to `templates/`, content).
pub(crate) const EMBEDDED: &[(&str, &str)] = &[
    ("base.html", include_str!("../../templates/base.html")),
    (
        "partials/header.html",
        include_str!("../../templates/partials/header.html"),
    ),
    (
        "partials/product_card.html",
        include_str!("../../templates/partials/product_card.html"),
    ),
    (
        "partials/footer.html",
        include_str!("../../templates/partials/footer.html"),
    ),
    (
        "partials/footer.txt",
        include_str!("../../templates/partials/footer.txt"),
    ),
    (
        "complete_your_setup/subject.txt",
        include_str!("../../templates/complete_your_setup/subject.txt"),
    ),
    (
        "complete_your_setup/preheader.txt",
        include_str!("../../templates/complete_your_setup/preheader.txt"),
    ),
    (
        "complete_your_setup/body.html",
        include_str!("../../templates/complete_your_setup/body.html"),
    ),
    (
        "complete_your_setup/body.txt",
        include_str!("../../templates/complete_your_setup/body.txt"),
    ),
    (
        "upgrade/subject.txt",
        include_str!("../../templates/upgrade/subject.txt"),
    ),
    (
        "upgrade/body.html",
        include_str!("../../templates/upgrade/body.html"),
    ),
    (
        "enhance/subject.txt",
        include_str!("../../templates/enhance/subject.txt"),
    ),
    (
        "enhance/preheader.txt",
        include_str!("../../templates/enhance/preheader.txt"),
    ),
    (
        "enhance/body.html",
        include_str!("../../templates/enhance/body.html"),
    ),
    (
        "enhance/body.txt",
        include_str!("../../templates/enhance/body.txt"),
    ),
];
