"""The Extensions tab: what is installed (status, version, errors with their tracebacks), enable/disable with
"Apply and restart UI", and install from a git URL or a local folder."""
from __future__ import annotations

import html
from collections.abc import Callable
from datetime import datetime

import gradio as gr

from webui.config.settings import Settings
from webui.core.errors import StudioError
from webui.extensions import manage
from webui.extensions.loader import Extensions
from webui.ui.common import error_html, info_html

# After "Apply and restart": wait for the server to go away and come back, then reload the page.
RELOAD_JS = """
async (result) => {
  if (!result || result.includes('studio-error')) return;
  await new Promise(r => setTimeout(r, 1500));
  for (let i = 0; i < 240; i++) {
    try { const r = await fetch(window.location.href, {cache: 'no-store'}); if (r.ok) break; } catch (e) {}
    await new Promise(r => setTimeout(r, 500));
  }
  window.location.reload();
}
"""


def _summary(problem: str) -> str:
    """Where it failed and the exception (the traceback's last line): "importing scripts/x.py: KeyError: 'a'"."""
    lines = [x for x in problem.splitlines() if x.strip()]
    head, last = lines[0] if lines else "", lines[-1].strip() if len(lines) > 1 else ""
    return f"{head} {last}"[:300]


def installed_html(extensions: Extensions) -> str:
    rows = []
    for e in extensions.all:
        g = e.read_git_info()
        when = datetime.fromtimestamp(g["commit_date"]).strftime("%Y-%m-%d") if g.get("commit_date") else ""
        status = e.status
        color = {"loaded": "#080", "failed": "#c00", "disabled": "#888"}.get(status, "#a60")
        problems = e.errors + extensions.script_errors(e)
        details = "".join(f"<details class='extension-error'><summary>{html.escape(_summary(p))}</summary>"
                          f"<pre>{html.escape(p)}</pre></details>" for p in problems)
        details += "".join(f"<div class='extension-note'>{html.escape(n)}</div>" for n in e.notes)
        parts = ", ".join(x for x in (", ".join(e.scripts), ", ".join(e.callbacks)) if x)
        rows.append(
            f"<tr id='extension_row_{html.escape(e.name)}'><td><b>{html.escape(e.name)}</b>"
            f"<div style='font-size:smaller'>{html.escape(parts)}</div></td>"
            f"<td class='extension-status' style='color:{color}'>{status}</td>"
            f"<td>{html.escape(g.get('version') or '')} {when}</td>"
            f"<td>{html.escape(g.get('remote') or str(e.path))}</td><td>{details}</td></tr>")
    if not rows:
        return f"<p>No extensions in {html.escape(str(extensions.folder))}.</p>"
    return ("<table id='extensions_table' style='width:100%'><thead><tr><th>Extension</th><th>Status</th>"
            "<th>Version</th><th>Source</th><th>Problems</th></tr></thead><tbody>" + "".join(rows) +
            "</tbody></table>")


def build(extensions: Extensions, settings: Settings, flags, restart: Callable[[], str] | None) -> None:
    """``restart`` schedules a restart of the studio (app.py's) and returns a message; raises StudioError when
    it cannot restart now."""
    allowed = manage.access_allowed(flags)
    if not allowed:
        gr.HTML(f"<div class='studio-error' style='color:#c00'>{html.escape(manage.access_refusal())}</div>",
                elem_id="extensions_access_notice")
    with gr.Tabs(elem_id="tabs_extensions"):
        with gr.Tab("Installed", id="extensions_installed_tab"):
            names = [e.name for e in extensions.all]
            enabled = gr.CheckboxGroup(names, value=[e.name for e in extensions.all if e.enabled],
                                       label="Enabled extensions", elem_id="extensions_enabled")
            with gr.Row():
                apply = gr.Button("Apply and restart UI", variant="primary", elem_id="extensions_apply")
                refresh = gr.Button("🔄 Check status", elem_id="extensions_refresh")
            result = gr.HTML(elem_id="extensions_result")
            table = gr.HTML(installed_html(extensions), elem_id="extensions_installed_html")
        with gr.Tab("Install from URL", id="extensions_install_tab"):
            url = gr.Textbox(label="URL of the extension's git repository, or a local folder",
                             elem_id="extension_install_url")
            dirname = gr.Textbox(label="Local directory name (optional)", elem_id="extension_install_dirname")
            install = gr.Button("Install", variant="primary", elem_id="extension_install_button")
            installed = gr.HTML(elem_id="extension_install_result")

    def do_apply(chosen):
        try:
            disabled = manage.set_enabled(settings, names, list(chosen or []), allowed=allowed)
            if restart is None:
                return info_html("Saved; restart the studio to apply.")
            message = restart()
        except StudioError as e:
            return error_html(e)
        return info_html(f"Disabled: {', '.join(disabled) or 'none'}. {message}")

    def do_install(source, name):
        try:
            path = manage.install_extension(source, extensions.folder, name, allowed=allowed)
        except StudioError as e:
            return error_html(e)
        return info_html(f"Installed into {path}. Use \"Apply and restart UI\" to load it.")

    apply.click(do_apply, enabled, result).then(None, result, None, js=RELOAD_JS)
    refresh.click(lambda: installed_html(extensions), None, table, queue=False)
    install.click(do_install, [url, dirname], installed)
