// Typesets the math that pymdownx.arithmatex wraps (generic mode: \( \) inline, \[ \] display) with KaTeX,
// served from docs/assets/katex; runs again on every page of Material's instant navigation.
function edgeTrlRenderMath(root) {
  renderMathInElement(root, {
    delimiters: [
      { left: "\\(", right: "\\)", display: false },
      { left: "\\[", right: "\\]", display: true },
    ],
    throwOnError: false,
  });
}
if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => edgeTrlRenderMath(body));
} else {
  document.addEventListener("DOMContentLoaded", () => edgeTrlRenderMath(document.body));
}
