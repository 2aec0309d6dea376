// "Generate forever" (A1111's right-click menu on Generate): starts the next job each time the last one ends,
// until "Cancel generate forever" or an error shown under the gallery.
(function () {
    const loops = {};   // tab name -> interval id

    function running(tab) {
        const progress = document.getElementById(tab + "_progress");
        return !!progress && progress.innerText.trim() !== "";
    }

    function failed(tab) {
        const error = document.getElementById(tab + "_error");
        return !!error && error.innerText.trim() !== "";
    }

    function start(tab) {
        if (loops[tab]) return;
        const button = document.getElementById(tab + "_generate");
        let waitingSince = 0;   // a click was made and its job has not shown progress yet
        let clicks = 0;
        const tick = function () {
            if (clicks > 0 && failed(tab) && !running(tab)) { stop(tab); return; }   // an error of our own job
            if (running(tab)) { waitingSince = 0; return; }
            // a job that ends before its first progress report leaves no trace but its result: give it a moment
            if (waitingSince && Date.now() - waitingSince < 1500) return;
            waitingSince = Date.now();
            clicks++;
            button.click();
        };
        loops[tab] = setInterval(tick, 250);
        tick();
    }

    function stop(tab) {
        clearInterval(loops[tab]);
        delete loops[tab];
    }

    function menu(tab, x, y) {
        document.querySelectorAll(".studio-context-menu").forEach(m => m.remove());
        const box = document.createElement("div");
        box.className = "studio-context-menu";
        box.id = tab + "_generate_menu";
        box.style.cssText = "position:fixed;z-index:10000;background:var(--background-fill-primary,#fff);" +
            "border:1px solid var(--border-color-primary,#888);border-radius:4px;padding:2px 0;" +
            "left:" + x + "px;top:" + y + "px;font-size:14px";
        const items = [["Generate forever", () => start(tab)], ["Cancel generate forever", () => stop(tab)]];
        for (const [label, act] of items) {
            const item = document.createElement("div");
            item.textContent = label;
            item.setAttribute("role", "menuitem");
            item.style.cssText = "padding:4px 12px;cursor:pointer";
            item.addEventListener("click", () => { box.remove(); act(); });
            box.appendChild(item);
        }
        document.body.appendChild(box);
    }

    document.addEventListener("contextmenu", function (e) {
        const button = e.target.closest && e.target.closest("#txt2img_generate, #img2img_generate");
        if (!button) return;
        e.preventDefault();
        menu(button.id.replace(/_generate$/, ""), e.clientX, e.clientY);
    });
    document.addEventListener("click", function (e) {
        // generate forever's own button.click() is untrusted: it must not close a menu the user has open
        if (!e.isTrusted) return;
        if (!e.target.closest || !e.target.closest(".studio-context-menu")) {
            document.querySelectorAll(".studio-context-menu").forEach(m => m.remove());
        }
    });
})();
