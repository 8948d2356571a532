//! A wasmos task in Zig: a plain WASI preview1 command.
//! Prints a greeting with its arguments; exits 0.
const std = @import("std");

pub fn main(init: std.process.Init) !void {
    const args = try init.minimal.args.toSlice(init.arena.allocator());

    var buf: [1024]u8 = undefined;
    var file_writer: std.Io.File.Writer = .init(.stdout(), init.io, &buf);
    const out = &file_writer.interface;

    try out.writeAll("hello from Zig");
    if (args.len > 1) {
        try out.writeAll(", ");
        for (args[1..], 0..) |arg, i| {
            if (i > 0) try out.writeAll(" ");
            try out.writeAll(arg);
        }
    }
    try out.print("!\nargs: {d}\n", .{args.len - 1});
    try out.flush();
}
