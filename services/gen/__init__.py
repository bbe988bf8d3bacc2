# Generated from proto/ by `python -m services.gen_protos`. Do not edit.
