"""The README's configuration reference, generated from the schema (``python -m agent.configdoc``)."""

from __future__ import annotations

from agent.configload import reference_rows


def render_reference() -> str:
    """A Markdown table: key, type, default, meaning."""
    lines = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, kind, default, doc in reference_rows():
        if kind == "section":  # listed for what the section does (mqtt.tls: present = TLS on)
            shown = "required" if default == "required" else "—"
            lines.append(f"| `{key}` | section | {shown} | {doc} |")
            continue
        shown = f"`{default}`" if default not in ("", "required", "none") else default or "—"
        meaning = doc.replace("|", "\\|")
        lines.append(f"| `{key}` | {kind} | {shown} | {meaning} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render_reference())
