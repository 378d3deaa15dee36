"""A real training run for the CLI tests, with the framework-free test backend.

Usage: python cli_trainer.py CKPT_DIR EPOCHS [--losses 0.9,0.5,...] [--no-checksum]
    [--metric val_loss]

Restarts (mode "auto") from CKPT_DIR, then trains up to EPOCHS. The model of epoch e is
``model.bin`` = bytes([e]) * (1000 + e) plus ``opt.bin``; the state restored at restart
therefore tells which epoch it came from. Prints one JSON line:
{"resumed_from": epoch or null, "restored_epoch": byte of the restored model or null,
 "restarted_from": its directory or null, "saved": [epochs written]}.
"""

import argparse
import json

from candle_ckpt.testing import CandleCkptFiles


def state_of(epoch: int) -> dict[str, bytes]:
    return {"model.bin": bytes([epoch]) * (1000 + epoch), "opt.bin": bytes([epoch]) * 300}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory")
    parser.add_argument("epochs", type=int)
    parser.add_argument("--losses", default="")
    parser.add_argument("--no-checksum", action="store_true")
    parser.add_argument("--metric", default="val_loss")
    args = parser.parse_args()
    losses = [float(v) for v in args.losses.split(",") if v]
    ckpt = CandleCkptFiles({
        "epochs": args.epochs,
        "ckpt_directory": args.directory,
        "ckpt_checksum": not args.no_checksum,
        "ckpt_save_best_metric": args.metric,
    }, logger=None)
    J = ckpt.restart()
    restored = None
    if J is not None:
        model = ckpt.state.get(J.get("model_file", "model.bin"), b"")
        restored = model[0] if model else None
    saved = []
    for epoch in range(J["epoch"] if J else 0, args.epochs):
        ckpt.set_model(state_of(epoch + 1))
        loss = losses[epoch] if epoch < len(losses) else 1.0 / (epoch + 1)
        if ckpt.ckpt_epoch(epoch, metric_value=loss):
            saved.append(epoch + 1)
    ckpt.close()
    print(json.dumps({"resumed_from": J["epoch"] if J else None,
                      "restarted_from": J["restarted_from"] if J else None,
                      "restored_epoch": restored, "saved": saved}))


if __name__ == "__main__":
    main()
