// Keyboard habits A1111 users bring: Ctrl+Enter generates, Alt+Enter skips, Esc interrupts a running job, and
// Ctrl+Up / Ctrl+Down change the attention weight of the word (or selection) under the cursor in a prompt box.
(function () {
    const STEP = 0.1;          // A1111's keyedit_precision_attention
    const STEP_NETWORK = 0.05; // its keyedit_precision_extra: <lora:name:w>
    const DELIMITERS = ".,\\/!?%^*;:{}=`~() \t\n";

    function currentTab() {
        for (const name of ["txt2img", "img2img"]) {
            const button = document.getElementById(name + "_generate");
            if (button && button.offsetParent !== null) return name;
        }
        return null;
    }

    function isPromptBox(el) {
        if (!el || el.tagName !== "TEXTAREA") return false;
        const box = el.closest("[id]");
        return !!box && /(_prompt|_neg_prompt|_hires_prompt|_hires_neg_prompt)$/.test(box.id);
    }

    function round(x, step) {
        const digits = Math.max(0, Math.ceil(-Math.log10(step) - 1e-9));
        return Number(x.toFixed(digits));
    }

    // [start, end) of the text to weigh when nothing is selected: the "(...)" or "<...>" around the cursor, else
    // the word under it.
    function around(text, pos) {
        for (const [open, close] of [["(", ")"], ["<", ">"]]) {
            const before = text.lastIndexOf(open, pos - 1);
            const closedBefore = text.lastIndexOf(close, pos - 1);
            const after = text.indexOf(close, pos);
            if (before !== -1 && before > closedBefore && after !== -1) {
                const inner = text.slice(before + 1, after);
                if (inner.indexOf(open) === -1) return [before + 1, after];
            }
        }
        let start = pos, end = pos;
        while (start > 0 && !DELIMITERS.includes(text[start - 1])) start--;
        while (end < text.length && !DELIMITERS.includes(text[end])) end++;
        return start === end ? null : [start, end];
    }

    function editWeight(el, up) {
        const text = el.value;
        let start = el.selectionStart, end = el.selectionEnd;
        if (start === end) {
            const span = around(text, start);
            if (!span) return false;
            [start, end] = span;
        }
        // a selection just inside "(" ... ":w)" or "<" ... ">" weighs that group
        const open = text[start - 1], close = text[end];
        if (open === "<" && close === ">") {
            const m = text.slice(start, end).match(/^(.*:)(-?[\d.]+)$/);
            if (!m) return false;
            const weight = round(parseFloat(m[2]) + (up ? STEP_NETWORK : -STEP_NETWORK), STEP_NETWORK);
            const inner = m[1] + weight;
            el.value = text.slice(0, start) + inner + text.slice(end);
            el.setSelectionRange(start, start + inner.length);
            return true;
        }
        let body = text.slice(start, end);
        let weight = 1.0;
        let from = start, to = end;
        if (open === "(" && close === ")") {
            from = start - 1;
            to = end + 1;
            const m = body.match(/^(.*):(-?[\d.]+)$/s);
            if (m) {
                body = m[1];
                weight = parseFloat(m[2]);
            } else {
                weight = 1.1;   // "(word)" means 1.1
            }
        } else {
            const trimmed = body.trim();
            const lead = body.length - body.trimStart().length;
            from = start + lead;
            to = from + trimmed.length;
            body = trimmed;
        }
        weight = round(weight + (up ? STEP : -STEP), STEP);
        const replaced = weight === 1 ? body : "(" + body + ":" + weight + ")";
        el.value = text.slice(0, from) + replaced + text.slice(to);
        const selStart = weight === 1 ? from : from + 1;
        el.setSelectionRange(selStart, selStart + body.length);
        return true;
    }

    document.addEventListener("keydown", function (e) {
        const enter = e.key === "Enter";
        const tab = currentTab();
        if (enter && (e.ctrlKey || e.metaKey) && tab) {
            document.getElementById(tab + "_generate").click();
            e.preventDefault();
            return;
        }
        if (enter && e.altKey && tab) {
            document.getElementById(tab + "_skip").click();
            e.preventDefault();
            return;
        }
        if (e.key === "Escape" && tab) {
            const progress = document.getElementById(tab + "_progress");
            if (progress && progress.innerText.trim() !== "") {   // a job of this tab is running
                document.getElementById(tab + "_interrupt").click();
                e.preventDefault();
            }
            return;
        }
        if ((e.key === "ArrowUp" || e.key === "ArrowDown") && (e.ctrlKey || e.metaKey) && isPromptBox(e.target)) {
            if (editWeight(e.target, e.key === "ArrowUp")) {
                e.preventDefault();
                e.target.dispatchEvent(new Event("input", {bubbles: true}));
            }
        }
    });
})();
